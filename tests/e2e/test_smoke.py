from identity.v1 import identity_pb2 as pb


def test_r11_none_none_creates_a_person_end_to_end(stub, workspace):
    response = stub.Identify(pb.IdentifyRequest(workspace_id=workspace, id="ab100", email="A@Example.com"))
    assert response.outcome == pb.IDENTIFY_OUTCOME_CREATED
    fetched = stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(email="a@example.com")))
    assert fetched.person.cio_id == response.person.cio_id
    assert fetched.person.email == "A@Example.com"
