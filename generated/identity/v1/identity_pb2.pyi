import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdentifierType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTIFIER_TYPE_UNSPECIFIED: _ClassVar[IdentifierType]
    IDENTIFIER_TYPE_ID: _ClassVar[IdentifierType]
    IDENTIFIER_TYPE_EMAIL: _ClassVar[IdentifierType]
    IDENTIFIER_TYPE_CIO_ID: _ClassVar[IdentifierType]

class IdentifyOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTIFY_OUTCOME_UNSPECIFIED: _ClassVar[IdentifyOutcome]
    IDENTIFY_OUTCOME_CREATED: _ClassVar[IdentifyOutcome]
    IDENTIFY_OUTCOME_UPDATED: _ClassVar[IdentifyOutcome]
    IDENTIFY_OUTCOME_MERGED: _ClassVar[IdentifyOutcome]
    IDENTIFY_OUTCOME_UNCHANGED: _ClassVar[IdentifyOutcome]

class IdentifierMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTIFIER_MODE_UNSPECIFIED: _ClassVar[IdentifierMode]
    IDENTIFIER_MODE_EMAIL_OR_ID: _ClassVar[IdentifierMode]
    IDENTIFIER_MODE_ID_ONLY: _ClassVar[IdentifierMode]
    IDENTIFIER_MODE_EMAIL_ONLY: _ClassVar[IdentifierMode]

class PersonEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PERSON_EVENT_KIND_UNSPECIFIED: _ClassVar[PersonEventKind]
    PERSON_EVENT_KIND_CREATED: _ClassVar[PersonEventKind]
    PERSON_EVENT_KIND_UPDATED: _ClassVar[PersonEventKind]
    PERSON_EVENT_KIND_MERGED: _ClassVar[PersonEventKind]
    PERSON_EVENT_KIND_UNMERGED: _ClassVar[PersonEventKind]
    PERSON_EVENT_KIND_DELETED: _ClassVar[PersonEventKind]
    PERSON_EVENT_KIND_ERASED: _ClassVar[PersonEventKind]
IDENTIFIER_TYPE_UNSPECIFIED: IdentifierType
IDENTIFIER_TYPE_ID: IdentifierType
IDENTIFIER_TYPE_EMAIL: IdentifierType
IDENTIFIER_TYPE_CIO_ID: IdentifierType
IDENTIFY_OUTCOME_UNSPECIFIED: IdentifyOutcome
IDENTIFY_OUTCOME_CREATED: IdentifyOutcome
IDENTIFY_OUTCOME_UPDATED: IdentifyOutcome
IDENTIFY_OUTCOME_MERGED: IdentifyOutcome
IDENTIFY_OUTCOME_UNCHANGED: IdentifyOutcome
IDENTIFIER_MODE_UNSPECIFIED: IdentifierMode
IDENTIFIER_MODE_EMAIL_OR_ID: IdentifierMode
IDENTIFIER_MODE_ID_ONLY: IdentifierMode
IDENTIFIER_MODE_EMAIL_ONLY: IdentifierMode
PERSON_EVENT_KIND_UNSPECIFIED: PersonEventKind
PERSON_EVENT_KIND_CREATED: PersonEventKind
PERSON_EVENT_KIND_UPDATED: PersonEventKind
PERSON_EVENT_KIND_MERGED: PersonEventKind
PERSON_EVENT_KIND_UNMERGED: PersonEventKind
PERSON_EVENT_KIND_DELETED: PersonEventKind
PERSON_EVENT_KIND_ERASED: PersonEventKind

class PersonRef(_message.Message):
    __slots__ = ("cio_id", "id", "email")
    CIO_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    cio_id: str
    id: str
    email: str
    def __init__(self, cio_id: _Optional[str] = ..., id: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class Person(_message.Message):
    __slots__ = ("cio_id", "id", "email", "attributes", "create_time", "update_time")
    CIO_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    cio_id: str
    id: str
    email: str
    attributes: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, cio_id: _Optional[str] = ..., id: _Optional[str] = ..., email: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("workspace_id", "cio_id", "id", "email", "attributes", "update_only", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CIO_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    cio_id: str
    id: str
    email: str
    attributes: _struct_pb2.Struct
    update_only: bool
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., cio_id: _Optional[str] = ..., id: _Optional[str] = ..., email: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., update_only: _Optional[bool] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("person", "outcome", "merged_cio_ids", "decision")
    PERSON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MERGED_CIO_IDS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    person: Person
    outcome: IdentifyOutcome
    merged_cio_ids: _containers.RepeatedScalarFieldContainer[str]
    decision: Decision
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ..., outcome: _Optional[_Union[IdentifyOutcome, str]] = ..., merged_cio_ids: _Optional[_Iterable[str]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("rule", "matches")
    RULE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    rule: str
    matches: _containers.RepeatedCompositeFieldContainer[IdentifierMatch]
    def __init__(self, rule: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[IdentifierMatch, _Mapping]]] = ...) -> None: ...

class IdentifierMatch(_message.Message):
    __slots__ = ("identifier", "value", "matched_cio_id")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_CIO_ID_FIELD_NUMBER: _ClassVar[int]
    identifier: IdentifierType
    value: str
    matched_cio_id: str
    def __init__(self, identifier: _Optional[_Union[IdentifierType, str]] = ..., value: _Optional[str] = ..., matched_cio_id: _Optional[str] = ...) -> None: ...

class UpdateIdentifierRequest(_message.Message):
    __slots__ = ("workspace_id", "person", "identifier", "value", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    person: PersonRef
    identifier: IdentifierType
    value: str
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., person: _Optional[_Union[PersonRef, _Mapping]] = ..., identifier: _Optional[_Union[IdentifierType, str]] = ..., value: _Optional[str] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class UpdateIdentifierResponse(_message.Message):
    __slots__ = ("person", "decision")
    PERSON_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    person: Person
    decision: Decision
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class DeleteIdentifierRequest(_message.Message):
    __slots__ = ("workspace_id", "person", "identifier", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    person: PersonRef
    identifier: IdentifierType
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., person: _Optional[_Union[PersonRef, _Mapping]] = ..., identifier: _Optional[_Union[IdentifierType, str]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class DeleteIdentifierResponse(_message.Message):
    __slots__ = ("person", "decision")
    PERSON_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    person: Person
    decision: Decision
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class GetSettingsRequest(_message.Message):
    __slots__ = ("workspace_id",)
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    def __init__(self, workspace_id: _Optional[str] = ...) -> None: ...

class GetSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: WorkspaceSettings
    def __init__(self, settings: _Optional[_Union[WorkspaceSettings, _Mapping]] = ...) -> None: ...

class WorkspaceSettings(_message.Message):
    __slots__ = ("workspace_id", "identifier_mode", "email_updatable_by_id", "sole_identifier_updatable", "auto_merge", "event_retention_days", "max_calls_per_second", "max_concurrent_calls")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_MODE_FIELD_NUMBER: _ClassVar[int]
    EMAIL_UPDATABLE_BY_ID_FIELD_NUMBER: _ClassVar[int]
    SOLE_IDENTIFIER_UPDATABLE_FIELD_NUMBER: _ClassVar[int]
    AUTO_MERGE_FIELD_NUMBER: _ClassVar[int]
    EVENT_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    MAX_CALLS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_CALLS_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    identifier_mode: IdentifierMode
    email_updatable_by_id: bool
    sole_identifier_updatable: bool
    auto_merge: bool
    event_retention_days: int
    max_calls_per_second: int
    max_concurrent_calls: int
    def __init__(self, workspace_id: _Optional[str] = ..., identifier_mode: _Optional[_Union[IdentifierMode, str]] = ..., email_updatable_by_id: _Optional[bool] = ..., sole_identifier_updatable: _Optional[bool] = ..., auto_merge: _Optional[bool] = ..., event_retention_days: _Optional[int] = ..., max_calls_per_second: _Optional[int] = ..., max_concurrent_calls: _Optional[int] = ...) -> None: ...

class GetPersonRequest(_message.Message):
    __slots__ = ("workspace_id", "person")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    person: PersonRef
    def __init__(self, workspace_id: _Optional[str] = ..., person: _Optional[_Union[PersonRef, _Mapping]] = ...) -> None: ...

class GetPersonResponse(_message.Message):
    __slots__ = ("person",)
    PERSON_FIELD_NUMBER: _ClassVar[int]
    person: Person
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ...) -> None: ...

class DeletePersonRequest(_message.Message):
    __slots__ = ("workspace_id", "person", "erase", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    ERASE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    person: PersonRef
    erase: bool
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., person: _Optional[_Union[PersonRef, _Mapping]] = ..., erase: _Optional[bool] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ImportPeopleRequest(_message.Message):
    __slots__ = ("workspace_id", "csv", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    CSV_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    csv: bytes
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., csv: _Optional[bytes] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class ImportPeopleResponse(_message.Message):
    __slots__ = ("rows", "applied_count", "refused_count")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ImportRowResult]
    applied_count: int
    refused_count: int
    def __init__(self, rows: _Optional[_Iterable[_Union[ImportRowResult, _Mapping]]] = ..., applied_count: _Optional[int] = ..., refused_count: _Optional[int] = ...) -> None: ...

class ImportRowResult(_message.Message):
    __slots__ = ("row", "outcome", "cio_id", "error")
    ROW_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CIO_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    row: int
    outcome: IdentifyOutcome
    cio_id: str
    error: _status_pb2.Status
    def __init__(self, row: _Optional[int] = ..., outcome: _Optional[_Union[IdentifyOutcome, str]] = ..., cio_id: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class DeletePersonResponse(_message.Message):
    __slots__ = ("cio_id",)
    CIO_ID_FIELD_NUMBER: _ClassVar[int]
    cio_id: str
    def __init__(self, cio_id: _Optional[str] = ...) -> None: ...

class CreateWorkspaceRequest(_message.Message):
    __slots__ = ("workspace_id", "settings", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    settings: WorkspaceSettings
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., settings: _Optional[_Union[WorkspaceSettings, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateWorkspaceResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: WorkspaceSettings
    def __init__(self, settings: _Optional[_Union[WorkspaceSettings, _Mapping]] = ...) -> None: ...

class UpdateSettingsRequest(_message.Message):
    __slots__ = ("workspace_id", "settings", "update_mask", "validate_only", "request_id")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    settings: WorkspaceSettings
    update_mask: _field_mask_pb2.FieldMask
    validate_only: bool
    request_id: str
    def __init__(self, workspace_id: _Optional[str] = ..., settings: _Optional[_Union[WorkspaceSettings, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., validate_only: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: WorkspaceSettings
    def __init__(self, settings: _Optional[_Union[WorkspaceSettings, _Mapping]] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ("workspace_id", "after_sequence", "end_when_caught_up")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    END_WHEN_CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    after_sequence: int
    end_when_caught_up: bool
    def __init__(self, workspace_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., end_when_caught_up: _Optional[bool] = ...) -> None: ...

class WatchChangesResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[PersonEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[PersonEvent, _Mapping]]] = ...) -> None: ...

class Identifiers(_message.Message):
    __slots__ = ("id", "email")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class AttributeChange(_message.Message):
    __slots__ = ("name", "old_value", "new_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    old_value: _struct_pb2.Value
    new_value: _struct_pb2.Value
    def __init__(self, name: _Optional[str] = ..., old_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., new_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class PersonEvent(_message.Message):
    __slots__ = ("sequence", "kind", "cio_id", "identifiers_before", "identifiers_after", "attribute_changes", "rpc", "request_id", "commit_time", "merged_cio_id", "merged_person", "unmerged_sequence")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CIO_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_AFTER_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_CHANGES_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    MERGED_CIO_ID_FIELD_NUMBER: _ClassVar[int]
    MERGED_PERSON_FIELD_NUMBER: _ClassVar[int]
    UNMERGED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: PersonEventKind
    cio_id: str
    identifiers_before: Identifiers
    identifiers_after: Identifiers
    attribute_changes: _containers.RepeatedCompositeFieldContainer[AttributeChange]
    rpc: str
    request_id: str
    commit_time: _timestamp_pb2.Timestamp
    merged_cio_id: str
    merged_person: Person
    unmerged_sequence: int
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[PersonEventKind, str]] = ..., cio_id: _Optional[str] = ..., identifiers_before: _Optional[_Union[Identifiers, _Mapping]] = ..., identifiers_after: _Optional[_Union[Identifiers, _Mapping]] = ..., attribute_changes: _Optional[_Iterable[_Union[AttributeChange, _Mapping]]] = ..., rpc: _Optional[str] = ..., request_id: _Optional[str] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., merged_cio_id: _Optional[str] = ..., merged_person: _Optional[_Union[Person, _Mapping]] = ..., unmerged_sequence: _Optional[int] = ...) -> None: ...

class ListPersonHistoryRequest(_message.Message):
    __slots__ = ("workspace_id", "person", "page_size", "page_token")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    person: PersonRef
    page_size: int
    page_token: str
    def __init__(self, workspace_id: _Optional[str] = ..., person: _Optional[_Union[PersonRef, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPersonHistoryResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[PersonEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[PersonEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MergePeopleRequest(_message.Message):
    __slots__ = ("workspace_id", "primary", "secondary", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    SECONDARY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    primary: PersonRef
    secondary: PersonRef
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., primary: _Optional[_Union[PersonRef, _Mapping]] = ..., secondary: _Optional[_Union[PersonRef, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class MergePeopleResponse(_message.Message):
    __slots__ = ("person", "merged_cio_id", "merge_sequence", "decision")
    PERSON_FIELD_NUMBER: _ClassVar[int]
    MERGED_CIO_ID_FIELD_NUMBER: _ClassVar[int]
    MERGE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    person: Person
    merged_cio_id: str
    merge_sequence: int
    decision: Decision
    def __init__(self, person: _Optional[_Union[Person, _Mapping]] = ..., merged_cio_id: _Optional[str] = ..., merge_sequence: _Optional[int] = ..., decision: _Optional[_Union[Decision, _Mapping]] = ...) -> None: ...

class UnmergePeopleRequest(_message.Message):
    __slots__ = ("workspace_id", "merge_sequence", "request_id", "validate_only")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    MERGE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    merge_sequence: int
    request_id: str
    validate_only: bool
    def __init__(self, workspace_id: _Optional[str] = ..., merge_sequence: _Optional[int] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class UnmergePeopleResponse(_message.Message):
    __slots__ = ("primary", "secondary")
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    SECONDARY_FIELD_NUMBER: _ClassVar[int]
    primary: Person
    secondary: Person
    def __init__(self, primary: _Optional[_Union[Person, _Mapping]] = ..., secondary: _Optional[_Union[Person, _Mapping]] = ...) -> None: ...

class ExportPeopleRequest(_message.Message):
    __slots__ = ("workspace_id",)
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    def __init__(self, workspace_id: _Optional[str] = ...) -> None: ...

class ExportPeopleResponse(_message.Message):
    __slots__ = ("people",)
    PEOPLE_FIELD_NUMBER: _ClassVar[int]
    people: _containers.RepeatedCompositeFieldContainer[Person]
    def __init__(self, people: _Optional[_Iterable[_Union[Person, _Mapping]]] = ...) -> None: ...

class StreamImportPeopleRequest(_message.Message):
    __slots__ = ("workspace_id", "import_id", "chunk")
    WORKSPACE_ID_FIELD_NUMBER: _ClassVar[int]
    IMPORT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    workspace_id: str
    import_id: str
    chunk: bytes
    def __init__(self, workspace_id: _Optional[str] = ..., import_id: _Optional[str] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class StreamImportPeopleResponse(_message.Message):
    __slots__ = ("progress", "refused_rows")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_ROWS_FIELD_NUMBER: _ClassVar[int]
    progress: ImportProgress
    refused_rows: _containers.RepeatedCompositeFieldContainer[ImportRowResult]
    def __init__(self, progress: _Optional[_Union[ImportProgress, _Mapping]] = ..., refused_rows: _Optional[_Iterable[_Union[ImportRowResult, _Mapping]]] = ...) -> None: ...

class ImportProgress(_message.Message):
    __slots__ = ("rows_read", "rows_applied", "rows_refused", "rows_skipped", "rows_per_second", "done")
    ROWS_READ_FIELD_NUMBER: _ClassVar[int]
    ROWS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    ROWS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    ROWS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    rows_read: int
    rows_applied: int
    rows_refused: int
    rows_skipped: int
    rows_per_second: float
    done: bool
    def __init__(self, rows_read: _Optional[int] = ..., rows_applied: _Optional[int] = ..., rows_refused: _Optional[int] = ..., rows_skipped: _Optional[int] = ..., rows_per_second: _Optional[float] = ..., done: _Optional[bool] = ...) -> None: ...
