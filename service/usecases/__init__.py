"""The use cases: one function per call, in domain terms."""

from service.usecases.service import IdentityService

__all__ = ["IdentityService"]
