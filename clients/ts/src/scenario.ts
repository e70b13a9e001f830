// The identity service's scenario in TypeScript (ts-proto with outputServices=grpc-js, and
// @grpc/grpc-js): create a workspace, identify a person with attributes, change the email, read
// the person back, remove the id, and provoke a refusal whose google.rpc.ErrorInfo is read from
// the status details. One line per step on stdout.
//
//   node dist/src/scenario.js ADDRESS WORKSPACE   (built by `make clients`; see README.md)
import { credentials, ServiceError, status } from "@grpc/grpc-js";
import { ErrorInfo } from "../gen/google/rpc/error_details";
import { Status } from "../gen/google/rpc/status";
import {
  CreateWorkspaceResponse,
  DeleteIdentifierResponse,
  GetPersonResponse,
  identifierModeToJSON,
  IdentifierType,
  identifyOutcomeToJSON,
  IdentifyResponse,
  IdentityServiceClient,
  UpdateIdentifierResponse,
  WorkspaceServiceClient,
} from "../gen/identity/v1/identity";

// The generated clients take a callback; this turns one call into a promise.
function unary<Res>(start: (callback: (error: ServiceError | null, response: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => start((error, response) => (error ? reject(error) : resolve(response))));
}

// The google.rpc.Status of a refusal travels in the grpc-status-details-bin trailer.
function errorInfo(error: ServiceError): ErrorInfo | undefined {
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  if (!bytes) return undefined;
  const details = Status.decode(bytes as Buffer).details ?? [];
  const any = details.find((d) => d.typeUrl === "type.googleapis.com/google.rpc.ErrorInfo");
  return any?.value ? ErrorInfo.decode(any.value) : undefined;
}

async function main(address: string, workspace: string): Promise<void> {
  const workspaces = new WorkspaceServiceClient(address, credentials.createInsecure());
  const people = new IdentityServiceClient(address, credentials.createInsecure());
  try {
    const created = await unary<CreateWorkspaceResponse>((done) =>
      workspaces.createWorkspace({ workspaceId: workspace }, done),
    );
    const mode = identifierModeToJSON(created.settings!.identifierMode!);
    console.log(`workspace id=${created.settings?.workspaceId} mode=${mode}`);

    // attributes is a google.protobuf.Struct, typed { [key: string]: any }: a plain object.
    // Every number is a double: 9007199254740993 is already 9007199254740992 in JavaScript, and
    // the service stores what it receives. Send integers above 2^53 as strings.
    const identified = await unary<IdentifyResponse>((done) => people.identify({
      workspaceId: workspace,
      id: "u1",
      email: "ada@example.com",
      attributes: {
        plan: "pro",
        seats: 3,
        beta: true,
        tags: ["a", "b"],
        big: 9007199254740993, // arrives as 9007199254740992
        big_as_string: "9007199254740993",
      },
    }, done));
    const got = identified.person?.attributes ?? {};
    console.log(
      `identify outcome=${identifyOutcomeToJSON(identified.outcome!)} rule=${identified.decision?.rule} ` +
        `plan=${got.plan} seats=${got.seats} big=${got.big}`,
    );

    const updated = await unary<UpdateIdentifierResponse>((done) => people.updateIdentifier({
      workspaceId: workspace,
      person: { id: "u1" },
      identifier: IdentifierType.IDENTIFIER_TYPE_EMAIL,
      value: "ada@new.example.com",
    }, done));
    console.log(`update email=${updated.person?.email} rule=${updated.decision?.rule}`);

    const read = await unary<GetPersonResponse>((done) => people.getPerson({
      workspaceId: workspace,
      person: { email: "ADA@new.example.com" },
    }, done));
    const attrs = read.person?.attributes ?? {};
    console.log(
      `get id=${read.person?.id} email=${read.person?.email} plan=${attrs.plan} seats=${attrs.seats} ` +
        `beta=${attrs.beta} tags=${attrs.tags.join(",")} big=${attrs.big} big_as_string=${attrs.big_as_string}`,
    );

    const removed = await unary<DeleteIdentifierResponse>((done) => people.deleteIdentifier({
      workspaceId: workspace,
      person: { email: "ada@new.example.com" },
      identifier: IdentifierType.IDENTIFIER_TYPE_ID,
    }, done));
    console.log(`delete-id rule=${removed.decision?.rule} id_set=${removed.person?.id !== undefined}`);

    // The email is now the last identifier: removing it is refused (FAILED_PRECONDITION).
    try {
      await unary<DeleteIdentifierResponse>((done) => people.deleteIdentifier({
        workspaceId: workspace,
        person: { email: "ada@new.example.com" },
        identifier: IdentifierType.IDENTIFIER_TYPE_EMAIL,
      }, done));
      throw new Error("removing the last identifier was not refused");
    } catch (e) {
      const error = e as ServiceError;
      const info = error.code !== undefined ? errorInfo(error) : undefined;
      if (!info) throw e;
      const metadata = Object.keys(info.metadata ?? {})
        .sort()
        .map((key) => `metadata.${key}=${info.metadata![key]}`)
        .join(" ");
      console.log(`refused code=${status[error.code]} reason=${info.reason} domain=${info.domain} ${metadata}`);
    }
  } finally {
    workspaces.close();
    people.close();
  }
}

const [address, workspace] = process.argv.slice(2);
if (!address || !workspace) {
  console.error("usage: node dist/src/scenario.js ADDRESS WORKSPACE");
  process.exit(2);
}
main(address, workspace).catch((error) => {
  console.error("error:", error);
  process.exit(1);
});
