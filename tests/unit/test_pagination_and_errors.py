import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from common.errors import DEPENDENCY_DOWN_MESSAGE, INTERNAL_MESSAGE, InvalidArgument, NotFound, to_status
from common.pagination import decode_token, encode_token, page_size


def test_page_size_rules() -> None:
    assert page_size(0) == 20
    assert page_size(7) == 7
    assert page_size(1000) == 100
    with pytest.raises(InvalidArgument, match=r"^page_size must not be negative$"):
        page_size(-1)


def test_tokens_round_trip_and_reject_garbage() -> None:
    token = encode_token({"k": "followers", "after": 42})
    assert decode_token(token, "followers") == {"k": "followers", "after": 42}
    assert decode_token("", "followers") is None
    for bad in ("!!!", "bm90IGpzb24", encode_token({"k": "tweets"})):
        with pytest.raises(InvalidArgument, match=r"^page_token is not valid$"):
            decode_token(bad, "followers")


def test_domain_error_maps_to_status_with_error_info() -> None:
    code, message, details = to_status(NotFound("user 7 does not exist"), ())
    assert code == grpc.StatusCode.NOT_FOUND
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == message == "user 7 does not exist"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "NOT_FOUND"


def test_unexpected_errors_never_leak_their_text() -> None:
    code, message, _ = to_status(RuntimeError("secret at db-7.internal:9042"), ())
    assert code == grpc.StatusCode.INTERNAL
    assert message == INTERNAL_MESSAGE


def test_dependency_errors_map_to_unavailable() -> None:
    code, message, _ = to_status(ConnectionError("redis at 10.0.0.1 refused"), (ConnectionError,))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message == DEPENDENCY_DOWN_MESSAGE
