"""Server reflection for both protocol versions, serving the protos with their comments.

The descriptors come from generated/identity/v1/descriptor_set.binpb (written by `make
generate` with source info and every import, plus google/rpc/error_details.proto), so that
`grpcurl describe` shows the proto's documentation and `grpcurl -format-error` can decode a
refusal's google.rpc.ErrorInfo and BadRequest through reflection. Files not in the set (health,
reflection itself) come from the default pool.

grpcio-reflection serves v1alpha only, and from descriptors (which drop source info); here one
servicer answers both versions: v1 has the same messages under another package, read and
written with the v1alpha classes (identical on the wire), and each file is sent as stored in
the descriptor set when it is there."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import _async as aio_reflection
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
DESCRIPTOR_SET = ("identity.v1", "descriptor_set.binpb")


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, made from v1alpha's (same messages, other package)."""
    file = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(file)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = "grpc.reflection.v1"
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    return file


def load_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    package, name = DESCRIPTOR_SET
    data = resources.files(package).joinpath(name).read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(data)


class Descriptors:
    """A pool of the served files, and each file's bytes as they are sent (with source info)."""

    def __init__(self, extra_files: Iterable[FileDescriptor | descriptor_pb2.FileDescriptorProto]) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.serialized: dict[str, bytes] = {}
        for file in load_descriptor_set().file:  # protoc writes imports before their importers
            self.pool.Add(file)
            self.serialized[file.name] = file.SerializeToString()
        for extra in extra_files:
            self._add(extra)

    def _add(self, file: FileDescriptor | descriptor_pb2.FileDescriptorProto) -> None:
        if file.name in self.serialized:
            return
        if isinstance(file, FileDescriptor):
            for dependency in file.dependencies:
                self._add(dependency)
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
        else:
            proto = file
        self.pool.Add(proto)
        self.serialized[proto.name] = proto.SerializeToString()

    def response(self, file: FileDescriptor, request: v1alpha.ServerReflectionRequest) -> v1alpha.ServerReflectionResponse:
        """The file and everything it imports, transitively (as grpcio-reflection answers)."""
        names: list[str] = []
        pending = [file]
        while pending:
            current = pending.pop()
            if current.name in names:
                continue
            names.append(current.name)
            pending.extend(current.dependencies)
        return v1alpha.ServerReflectionResponse(
            file_descriptor_response=v1alpha.FileDescriptorResponse(
                file_descriptor_proto=[self.serialized[name] for name in names]
            ),
            original_request=request,
        )


@lru_cache(maxsize=1)
def descriptors() -> Descriptors:
    from grpc_health.v1 import health_pb2

    return Descriptors([health_pb2.DESCRIPTOR, v1alpha.DESCRIPTOR, _v1_file()])


class ReflectionServicer(aio_reflection.ReflectionServicer):
    """grpcio-reflection's servicer, answering files as stored in the descriptor set."""

    def __init__(self, service_names: Iterable[str], served: Descriptors) -> None:
        super().__init__(service_names, pool=served.pool)
        self._served = served

    def _file_by_filename(self, request, filename):
        try:
            file = self._pool.FindFileByName(filename)
        except KeyError:
            return super()._file_by_filename(request, filename)  # the not-found answer
        return self._served.response(file, request)

    def _file_containing_symbol(self, request, fully_qualified_name):
        file = self._find_symbol(fully_qualified_name)
        if file is None:
            return super()._file_containing_symbol(request, fully_qualified_name)  # not found
        return self._served.response(file, request)

    def _find_symbol(self, name: str) -> FileDescriptor | None:
        try:
            return self._pool.FindFileContainingSymbol(name)
        except KeyError:
            pass
        # The pool finds no methods (`grpcurl describe identity.v1.IdentityService.Identify`
        # asks for one): a method is found in its service's file.
        service_name, _, method = name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return None
        return service.file if method in service.methods_by_name else None

    def _file_containing_extension(self, request, containing_type, extension_number):
        try:
            message = self._pool.FindMessageTypeByName(containing_type)
            extension = self._pool.FindExtensionByNumber(message, extension_number)
            file = self._pool.FindFileContainingSymbol(extension.full_name)
        except KeyError:
            return super()._file_containing_extension(request, containing_type, extension_number)
        return self._served.response(file, request)


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE]
    servicer = ReflectionServicer(names, descriptors())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # v1alpha
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                V1_SERVICE,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=v1alpha.ServerReflectionRequest.FromString,
                        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
