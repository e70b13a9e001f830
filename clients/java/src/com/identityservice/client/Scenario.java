// The identity service's scenario in Java (protoc's Java output, grpc-java's stubs, the Netty
// transport): create a workspace, identify a person with attributes, change the email, read the
// person back, remove the id, and provoke a refusal whose google.rpc.ErrorInfo is read from the
// status details. One line per step on stdout.
//
//   java -cp ... com.identityservice.client.Scenario ADDRESS WORKSPACE   (see README.md)
package com.identityservice.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.ListValue;
import com.google.protobuf.NullValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.rpc.ErrorInfo;
import com.identityservice.identity.v1.CreateWorkspaceRequest;
import com.identityservice.identity.v1.CreateWorkspaceResponse;
import com.identityservice.identity.v1.DeleteIdentifierRequest;
import com.identityservice.identity.v1.DeleteIdentifierResponse;
import com.identityservice.identity.v1.GetPersonRequest;
import com.identityservice.identity.v1.GetPersonResponse;
import com.identityservice.identity.v1.IdentifierType;
import com.identityservice.identity.v1.IdentifyRequest;
import com.identityservice.identity.v1.IdentifyResponse;
import com.identityservice.identity.v1.IdentityServiceGrpc;
import com.identityservice.identity.v1.PersonRef;
import com.identityservice.identity.v1.UpdateIdentifierRequest;
import com.identityservice.identity.v1.UpdateIdentifierResponse;
import com.identityservice.identity.v1.WorkspaceServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.math.BigDecimal;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

public final class Scenario {
  private Scenario() {}

  /**
   * A google.protobuf.Struct from a plain Map (protobuf-java has no such conversion). Every
   * number becomes a double: a long above 2^53 loses its last digits, so send it as a String.
   */
  static Struct toStruct(Map<String, ?> map) {
    Struct.Builder struct = Struct.newBuilder();
    map.forEach((key, value) -> struct.putFields(key, toValue(value)));
    return struct.build();
  }

  static Value toValue(Object value) {
    if (value == null) {
      return Value.newBuilder().setNullValue(NullValue.NULL_VALUE).build();
    } else if (value instanceof String) {
      return Value.newBuilder().setStringValue((String) value).build();
    } else if (value instanceof Number) {
      return Value.newBuilder().setNumberValue(((Number) value).doubleValue()).build();
    } else if (value instanceof Boolean) {
      return Value.newBuilder().setBoolValue((Boolean) value).build();
    } else if (value instanceof List) {
      ListValue.Builder list = ListValue.newBuilder();
      ((List<?>) value).forEach(item -> list.addValues(toValue(item)));
      return Value.newBuilder().setListValue(list).build();
    } else if (value instanceof Map) {
      @SuppressWarnings("unchecked")
      Map<String, ?> map = (Map<String, ?>) value;
      return Value.newBuilder().setStructValue(toStruct(map)).build();
    }
    throw new IllegalArgumentException("not a JSON value: " + value.getClass());
  }

  /** A Struct number (always a double) without an exponent: 3, 9007199254740992. */
  static String number(Value value) {
    return new BigDecimal(value.getNumberValue()).toPlainString();
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: Scenario ADDRESS WORKSPACE");
      System.exit(2);
    }
    String workspace = args[1];
    ManagedChannel channel = ManagedChannelBuilder.forTarget(args[0]).usePlaintext().build();
    try {
      WorkspaceServiceGrpc.WorkspaceServiceBlockingStub workspaces =
          WorkspaceServiceGrpc.newBlockingStub(channel).withDeadlineAfter(30, TimeUnit.SECONDS);
      IdentityServiceGrpc.IdentityServiceBlockingStub people =
          IdentityServiceGrpc.newBlockingStub(channel).withDeadlineAfter(30, TimeUnit.SECONDS);

      CreateWorkspaceResponse created =
          workspaces.createWorkspace(CreateWorkspaceRequest.newBuilder().setWorkspaceId(workspace).build());
      System.out.printf("workspace id=%s mode=%s%n",
          created.getSettings().getWorkspaceId(), created.getSettings().getIdentifierMode());

      Map<String, Object> attributes = new TreeMap<>();
      attributes.put("plan", "pro");
      attributes.put("seats", 3);
      attributes.put("beta", true);
      attributes.put("tags", List.of("a", "b"));
      attributes.put("big", 9007199254740993L); // arrives as 9007199254740992
      attributes.put("big_as_string", "9007199254740993");
      IdentifyResponse identified = people.identify(IdentifyRequest.newBuilder()
          .setWorkspaceId(workspace)
          .setId("u1")
          .setEmail("ada@example.com")
          .setAttributes(toStruct(attributes))
          .build());
      Map<String, Value> got = identified.getPerson().getAttributes().getFieldsMap();
      System.out.printf("identify outcome=%s rule=%s plan=%s seats=%s big=%s%n", identified.getOutcome(),
          identified.getDecision().getRule(), got.get("plan").getStringValue(), number(got.get("seats")),
          number(got.get("big")));

      UpdateIdentifierResponse updated = people.updateIdentifier(UpdateIdentifierRequest.newBuilder()
          .setWorkspaceId(workspace)
          .setPerson(PersonRef.newBuilder().setId("u1"))
          .setIdentifier(IdentifierType.IDENTIFIER_TYPE_EMAIL)
          .setValue("ada@new.example.com")
          .build());
      System.out.printf("update email=%s rule=%s%n", updated.getPerson().getEmail(), updated.getDecision().getRule());

      GetPersonResponse read = people.getPerson(GetPersonRequest.newBuilder()
          .setWorkspaceId(workspace)
          .setPerson(PersonRef.newBuilder().setEmail("ADA@new.example.com"))
          .build());
      Map<String, Value> attrs = read.getPerson().getAttributes().getFieldsMap();
      String tags = attrs.get("tags").getListValue().getValuesList().stream()
          .map(Value::getStringValue).collect(Collectors.joining(","));
      System.out.printf("get id=%s email=%s plan=%s seats=%s beta=%s tags=%s big=%s big_as_string=%s%n",
          read.getPerson().getId(), read.getPerson().getEmail(), attrs.get("plan").getStringValue(),
          number(attrs.get("seats")), attrs.get("beta").getBoolValue(), tags, number(attrs.get("big")),
          attrs.get("big_as_string").getStringValue());

      DeleteIdentifierResponse removed = people.deleteIdentifier(DeleteIdentifierRequest.newBuilder()
          .setWorkspaceId(workspace)
          .setPerson(PersonRef.newBuilder().setEmail("ada@new.example.com"))
          .setIdentifier(IdentifierType.IDENTIFIER_TYPE_ID)
          .build());
      System.out.printf("delete-id rule=%s id_set=%s%n", removed.getDecision().getRule(), removed.getPerson().hasId());

      // The email is now the last identifier: removing it is refused (FAILED_PRECONDITION) with
      // a google.rpc.ErrorInfo in the status details (the grpc-status-details-bin trailer).
      try {
        people.deleteIdentifier(DeleteIdentifierRequest.newBuilder()
            .setWorkspaceId(workspace)
            .setPerson(PersonRef.newBuilder().setEmail("ada@new.example.com"))
            .setIdentifier(IdentifierType.IDENTIFIER_TYPE_EMAIL)
            .build());
        throw new IllegalStateException("removing the last identifier was not refused");
      } catch (StatusRuntimeException e) {
        System.out.println("refused code=" + Status.fromThrowable(e).getCode() + " " + describe(errorInfo(e)));
      }
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  static ErrorInfo errorInfo(StatusRuntimeException e) throws InvalidProtocolBufferException {
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    if (status != null) {
      for (Any detail : status.getDetailsList()) {
        if (detail.is(ErrorInfo.class)) {
          return detail.unpack(ErrorInfo.class);
        }
      }
    }
    throw new IllegalStateException("refusal without ErrorInfo: " + e);
  }

  static String describe(ErrorInfo info) {
    String metadata = new TreeMap<>(info.getMetadataMap()).entrySet().stream()
        .map(entry -> "metadata." + entry.getKey() + "=" + entry.getValue())
        .collect(Collectors.joining(" "));
    return "reason=" + info.getReason() + " domain=" + info.getDomain() + " " + metadata;
  }
}
