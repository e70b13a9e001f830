"""The rules core: every identity decision (R1-R42), pure: plain data in, a decision out.

No gRPC and no SQL here. Search for a rule's number (e.g. "R21") to find the code that decides it.
- validation: field shapes (R3-R6, R8) and the email key
- modes: identifiers per mode (R1), settings changes (R2)
- decisions: what a call looks up first (Lookup) and what it decides to write (Decision)
- changes: applying attribute and identifier changes to a person (R14, R6's stored limit)
- identify: add or update a person (R9-R15, R13 merge)
- identifiers: references (R7), who a lookup finds, update (R20-R24) and delete (R30-R32) of an
  identifier
Each call is two steps: a *_lookup function validates the request's shapes, once, naming every
bad field (R42), and says whom to load; then a decide_* function decides on the loaded people
and the workspace's settings (what depends on them: R6's reserved names, R7, R9, R12, R23).
"""
