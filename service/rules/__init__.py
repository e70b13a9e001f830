"""The rules core: every identity decision (R1-R42), pure: plain data in, a decision out.

No gRPC and no SQL here. Search for a rule's number (e.g. "R21") to find the code that decides it.
- validation: field shapes (R3-R6, R8) and the email key
- modes: identifiers per mode (R1), index keys (R41), settings changes (R2)
- identify: add or update a person (R9-R15, R13 merge)
- identifiers: references (R7), update (R20-R24) and delete (R30-R32) of an identifier
"""
