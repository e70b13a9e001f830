"""The identity service: decides who a person is, per workspace, over gRPC."""
