"""Who the benchmark's people are. Everything is derived from a number, so the loader, the load
generator processes and pgbench agree without shipping lists between them.

- person k (1..N): id `user-k`, email `user-k@example.com`, both identifiers.
- merge pair j: person A with only the id `ma-j`, person B with only the email `mb-j@example.com`;
  Identify(id=ma-j, email=mb-j@...) merges them (R13).
"""

from __future__ import annotations

import hashlib

# As service.rules.validation generates them (R5): 20 characters of Crockford's base32.
CIO_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
CIO_ID_LENGTH = 20
EMAIL_DOMAIN = "example.com"


def cio_id(workspace_id: str, kind: str, n: int) -> str:
    """A random-looking but reproducible cio_id (100 bits of a hash), so that rows spread over
    the primary key's index as the service's own random cio_ids do."""
    digest = hashlib.blake2b(f"{workspace_id}/{kind}/{n}".encode(), digest_size=13).digest()
    bits = int.from_bytes(digest, "big")
    chars = []
    for _ in range(CIO_ID_LENGTH):
        chars.append(CIO_ID_ALPHABET[bits & 31])
        bits >>= 5
    return "".join(chars)


def person_id(k: int) -> str:
    return f"user-{k}"


def person_email(k: int) -> str:
    return f"user-{k}@{EMAIL_DOMAIN}"


def person_cio_id(workspace_id: str, k: int) -> str:
    return cio_id(workspace_id, "p", k)


def pair_a_id(j: int) -> str:
    return f"ma-{j}"


def pair_b_email(j: int) -> str:
    return f"mb-{j}@{EMAIL_DOMAIN}"


def pair_cio_ids(workspace_id: str, j: int) -> tuple[str, str]:
    return cio_id(workspace_id, "a", j), cio_id(workspace_id, "b", j)
