"""Field validation (R3-R6, R8 shape) and the normalised email key. Pure: values in, violations out."""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from typing import Mapping

from email_validator import EmailNotValidError, validate_email

from service.domain import JsonValue
from service.errors import FieldViolation, InvalidArgument

ID_MAX_BYTES = 150
EMAIL_MAX_CHARS = 254
MAX_ATTRIBUTES = 300
ATTRIBUTE_NAME_MAX_BYTES = 150
ATTRIBUTE_VALUE_MAX_BYTES = 1000

CIO_ID_LENGTH = 20
# Crockford's base32 alphabet: letters and digits only, no look-alikes (R5, [choice] in section 1).
_CIO_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_CIO_ID_SHAPE = re.compile("[%s]{%d}" % (_CIO_ID_ALPHABET, CIO_ID_LENGTH))
_WORKSPACE_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def new_cio_id() -> str:
    """A fresh cio_id: 100 random bits in 20 characters of base32, short and URL-safe."""
    bits = secrets.randbits(5 * CIO_ID_LENGTH)
    chars = []
    for _ in range(CIO_ID_LENGTH):
        chars.append(_CIO_ID_ALPHABET[bits & 31])
        bits >>= 5
    return "".join(chars)


def email_key(email: str) -> str:
    """R4/section 1: the one place emails are normalised for matching. Unicode-aware lower-casing
    of the whole address (after NFC, so composed and decomposed forms match), done in Python,
    never by the database's collation."""
    # NFC again after lower-casing: lower() can decompose, and the key must be stable.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", email).lower())


def check_workspace_id(value: str, field: str = "workspace_id") -> list[FieldViolation]:
    """R8 (shape): 1 to 64 characters of letters, digits, '_' and '-'."""
    if not value:
        return [FieldViolation(field, "is required", "WORKSPACE_ID_REQUIRED")]
    if not _WORKSPACE_ID_SHAPE.fullmatch(value):
        return [
            FieldViolation(
                field, "must be 1 to 64 letters, digits, '_' or '-'", "INVALID_WORKSPACE_ID"
            )
        ]
    return []


def check_id(value: str, field: str = "id") -> list[FieldViolation]:
    """R3: non-empty, at most 150 bytes of UTF-8, no surrounding whitespace, no control chars."""
    if value == "":
        return [FieldViolation(field, "must not be empty", "INVALID_ID")]
    if len(value.encode("utf-8", "surrogatepass")) > ID_MAX_BYTES:
        return [FieldViolation(field, f"must be at most {ID_MAX_BYTES} bytes of UTF-8", "INVALID_ID")]
    if value != value.strip():
        return [FieldViolation(field, "must not start or end with whitespace", "INVALID_ID")]
    if _CONTROL.search(value):
        return [FieldViolation(field, "must not contain control characters", "INVALID_ID")]
    return []


def check_email(value: str, field: str = "email") -> list[FieldViolation]:
    """R4: a syntactically valid address, at most 254 characters, no surrounding whitespace,
    no DNS look-ups."""
    if value == "":
        return [FieldViolation(field, "must not be empty", "INVALID_EMAIL")]
    if len(value) > EMAIL_MAX_CHARS:
        return [FieldViolation(field, f"must be at most {EMAIL_MAX_CHARS} characters", "INVALID_EMAIL")]
    if value != value.strip():
        return [FieldViolation(field, "must not start or end with whitespace", "INVALID_EMAIL")]
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as e:
        return [FieldViolation(field, f"is not a valid email address: {e}", "INVALID_EMAIL")]
    return []


def check_cio_id(value: str, field: str = "cio_id") -> list[FieldViolation]:
    """R5: a cio_id given by a client must have the service's shape."""
    if not _CIO_ID_SHAPE.fullmatch(value):
        return [
            FieldViolation(
                field,
                f"must be {CIO_ID_LENGTH} characters of {_CIO_ID_ALPHABET}, as the service generates",
                "INVALID_CIO_ID",
            )
        ]
    return []


def check_attributes(
    attributes: Mapping[str, JsonValue], reserved: frozenset[str], field: str = "attributes"
) -> list[FieldViolation]:
    """R6: at most 300 names; a name is 1..150 bytes; a value's JSON encoding is at most 1000
    bytes; names in `reserved` (the workspace's identifiers) are refused."""
    violations: list[FieldViolation] = []
    if len(attributes) > MAX_ATTRIBUTES:
        violations.append(
            FieldViolation(field, f"must have at most {MAX_ATTRIBUTES} names", "TOO_MANY_ATTRIBUTES")
        )
    for name, value in attributes.items():
        size = len(name.encode("utf-8", "surrogatepass"))
        if size == 0 or size > ATTRIBUTE_NAME_MAX_BYTES:
            violations.append(
                FieldViolation(
                    f"{field}.{name}",
                    f"name must be 1 to {ATTRIBUTE_NAME_MAX_BYTES} bytes",
                    "INVALID_ATTRIBUTE_NAME",
                )
            )
            continue
        if name in reserved:
            violations.append(
                FieldViolation(
                    f"{field}.{name}",
                    f"'{name}' is an identifier in this workspace, not an attribute",
                    "RESERVED_ATTRIBUTE_NAME",
                )
            )
            continue
        if value is not None and attribute_size(value) > ATTRIBUTE_VALUE_MAX_BYTES:
            violations.append(
                FieldViolation(
                    f"{field}.{name}",
                    f"value must be at most {ATTRIBUTE_VALUE_MAX_BYTES} bytes of JSON",
                    "ATTRIBUTE_VALUE_TOO_LARGE",
                )
            )
    return violations


def attribute_size(value: JsonValue) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)
