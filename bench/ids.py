"""Who the benchmark's people are. Everything is derived from a number, so the loader, the load
generator processes and pgbench agree without shipping lists between them.

The benchmark loads one workspace of each shape (SHAPES), each with N people:

- "ids": an ID_ONLY workspace; person k has the id `user-k` and no email (the shape of every
  ID_ONLY workspace);
- "emails": an EMAIL_ONLY workspace; person k has the email `user-k@example.com` and no id;
- "both": an EMAIL_OR_ID workspace; person k has both. It also holds the merge pairs: pair j is
  person A with only the id `ma-j` and person B with only the email `mb-j@example.com`;
  Identify(id=ma-j, email=mb-j@...) merges them (R13).
"""

from __future__ import annotations

import hashlib

# As service.rules.validation generates them (R5): 20 characters of Crockford's base32.
CIO_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
CIO_ID_LENGTH = 20
EMAIL_DOMAIN = "example.com"
# shape -> (identifier mode, its people have ids, its people have emails)
SHAPES: dict[str, tuple[str, bool, bool]] = {
    "ids": ("ID_ONLY", True, False),
    "emails": ("EMAIL_ONLY", False, True),
    "both": ("EMAIL_OR_ID", True, True),
}


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
