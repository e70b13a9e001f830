"""Field validation (R3-R6, R8) and the normalised email key. Pure: values in, violations out."""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Mapping

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from service.domain import JsonValue, Settings
from service.errors import FieldViolation, InvalidArgument, NotFound

ID_MAX_BYTES = 150
EMAIL_MAX_CHARS = 254
MAX_ATTRIBUTES = 300
ATTRIBUTE_NAME_MAX_BYTES = 150
ATTRIBUTE_VALUE_MAX_BYTES = 1000
MAX_VALUE_DEPTH = 16  # levels of lists and objects in one value (R6, [choice])

CIO_ID_LENGTH = 20
# Crockford's base32 alphabet: letters and digits only, no look-alikes (R5, [choice] in section 1).
_CIO_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_CIO_ID_SHAPE = re.compile("[%s]{%d}" % (_CIO_ID_ALPHABET, CIO_ID_LENGTH))
_WORKSPACE_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# R4's common case, checked without email_validator (which takes about 15 us an address, the
# largest cost of a bulk import's row): plain ASCII dot-atoms, a local part of at most 64
# characters, labels of letters, digits and inner hyphens (none with "--", so no IDNA), and an
# alphabetic top-level domain that is not a special-use name. Every address it accepts,
# email_validator accepts too (tests/unit/test_rules_validation.py pins the two together);
# anything else goes to email_validator.
_PLAIN_EMAIL = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
    r"@(?:(?!-)(?![^.]*--)[A-Za-z0-9-]{1,63}(?<!-)\.)+([A-Za-z]{2,63})"
)
_SPECIAL_USE_TLDS = frozenset(SPECIAL_USE_DOMAIN_NAMES)


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


_UUID_SHAPE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def check_request_id(value: str, field: str = "request_id") -> list[FieldViolation]:
    """R70 (AIP-155): empty (no deduplication) or a UUID in its canonical 8-4-4-4-12 form."""
    if value and not _UUID_SHAPE.fullmatch(value):
        return [FieldViolation(field, "must be a UUID (8-4-4-4-12 hexadecimal digits) or empty", "INVALID_REQUEST_ID")]
    return []


def check_import_id(value: str, field: str = "import_id") -> list[FieldViolation]:
    """R81: a streamed import is named by a UUID, chosen by the client; the same id resumes it."""
    if not value:
        return [FieldViolation(field, "is required: a UUID naming the import (the same one resumes it)", "IMPORT_ID_REQUIRED")]
    return check_request_id(value, field)


def request_key(value: str) -> str:
    """The form a request_id is stored under: one spelling per UUID (hex digits in lower case)."""
    return value.lower()


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


def require_workspace(settings: Settings | None, workspace_id: str) -> Settings:
    """R8: the request names a workspace that exists (NOT_FOUND otherwise); `settings` is what
    the database holds for it, if anything."""
    if settings is None:
        raise NotFound(
            "WORKSPACE_NOT_FOUND",
            f"workspace {workspace_id!r} does not exist",
            {"workspace_id": workspace_id, "rule": "R8"},
        )
    return settings


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
    plain = _PLAIN_EMAIL.fullmatch(value)
    if plain is not None and plain.group(1).lower() not in _SPECIAL_USE_TLDS:
        return []
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


def check_attributes(attributes: Mapping[str, JsonValue], field: str = "attributes") -> list[FieldViolation]:
    """R6, the shapes (whatever the mode): at most 300 names; a name is 1..150 bytes of UTF-8
    without NUL; a value is JSON (numbers finite, strings without NUL, at most 16 levels of
    lists and objects) whose encoding is at most 1000 bytes. A null value removes that name.
    Each value is walked once, its JSON size counted on the way. Which names are reserved
    depends on the mode: check_reserved_names."""
    violations: list[FieldViolation] = []
    if len(attributes) > MAX_ATTRIBUTES:
        violations.append(
            FieldViolation(field, f"must have at most {MAX_ATTRIBUTES} names", "TOO_MANY_ATTRIBUTES")
        )
    for name, value in attributes.items():
        problem = _name_problem(name)
        if problem:
            violations.append(FieldViolation(f"{field}.{name}", problem, "INVALID_ATTRIBUTE_NAME"))
            continue
        if value is None:
            continue
        try:
            _json_size(value, 0, 0)
        except _BadValue as bad:
            violations.append(FieldViolation(f"{field}.{name}", bad.description, bad.reason))
    return violations


def check_reserved_names(
    attributes: Mapping[str, JsonValue], reserved: frozenset[str], field: str = "attributes"
) -> list[FieldViolation]:
    """R6: names in `reserved` (the workspace's identifiers, modes.reserved_attribute_names) are
    not attributes."""
    return [
        FieldViolation(
            f"{field}.{name}",
            f"'{name}' is an identifier in this workspace, not an attribute",
            "RESERVED_ATTRIBUTE_NAME",
        )
        for name in attributes
        if name in reserved
    ]


def _name_problem(name: str) -> str:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "name must be valid Unicode (no lone surrogates)"
    if size == 0 or size > ATTRIBUTE_NAME_MAX_BYTES:
        return f"name must be 1 to {ATTRIBUTE_NAME_MAX_BYTES} bytes"
    if "\x00" in name:
        return "name must not contain NUL characters"
    return ""


class _BadValue(Exception):
    """Why a value is refused (R6); caught in check_attributes, never raised out of it."""

    def __init__(self, description: str, reason: str = "INVALID_ATTRIBUTE_VALUE"):
        self.description = description
        self.reason = reason


def _too_large() -> _BadValue:
    return _BadValue(f"value must be at most {ATTRIBUTE_VALUE_MAX_BYTES} bytes of JSON", "ATTRIBUTE_VALUE_TOO_LARGE")


# An int of more bits than this has more digits than the limit has bytes (and Python refuses to
# print ints beyond 4300 digits).
_INT_MAX_BITS = ATTRIBUTE_VALUE_MAX_BYTES * 10 // 3


def _json_size(value: JsonValue, depth: int, size: int) -> int:
    """`size` plus the bytes of `value`'s compact JSON encoding (UTF-8, as json.dumps with
    ensure_ascii=False and separators (",", ":")); raises _BadValue for what is not JSON, or
    as soon as the size passes the limit."""
    if isinstance(value, str):
        size += _string_size(value)
    elif value is None:
        size += 4
    elif isinstance(value, bool):
        size += 4 if value else 5
    elif isinstance(value, int):
        if value.bit_length() > _INT_MAX_BITS:
            raise _too_large()
        size += len(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _BadValue("numbers must be finite")
        size += len(float.__repr__(value))
    elif isinstance(value, (list, tuple, dict)):
        if depth == MAX_VALUE_DEPTH:
            raise _BadValue(f"must not nest lists and objects more than {MAX_VALUE_DEPTH} levels deep")
        size += 2 + max(len(value) - 1, 0)  # brackets and commas
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _BadValue("object keys must be strings")
                size = _json_size(item, depth + 1, size + _string_size(key) + 1)  # key and ':'
        else:
            for item in value:
                size = _json_size(item, depth + 1, size)
    else:
        raise _BadValue(f"{type(value).__name__} is not a JSON value")
    if size > ATTRIBUTE_VALUE_MAX_BYTES:
        raise _too_large()
    return size


def _string_size(value: str) -> int:
    if "\x00" in value:
        raise _BadValue("strings must not contain NUL characters")
    try:
        return len(encode_basestring(value).encode("utf-8"))
    except UnicodeEncodeError:
        raise _BadValue("strings must be valid Unicode (no lone surrogates)") from None


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)
