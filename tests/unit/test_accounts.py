import pytest

from common.errors import InvalidArgument
from graph_svc.accounts import Passwords, username_key, validate_password, validate_username


@pytest.mark.parametrize("name", ["a", "ada", "A_b_9", "x" * 15])
def test_valid_usernames(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, "has space", "dash-ed", "émile", "a\n", "\uff21\uff22\uff23"])
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_username(name)


def test_username_key_ignores_case() -> None:
    assert username_key("Ada_Lovelace") == username_key("ada_LOVELACE")


@pytest.mark.parametrize("password", ["1234567", "x" * 129, ""])
def test_invalid_passwords(password: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_password(password)


@pytest.mark.parametrize("password", ["12345678", "x" * 128, "correct horse"])
def test_valid_passwords(password: str) -> None:
    assert validate_password(password) == password


async def test_passwords_are_argon2id_salted_and_verifiable() -> None:
    passwords = Passwords(memory_kib=19456, time_cost=2, parallelism=1)
    first = await passwords.hash("correct horse")
    second = await passwords.hash("correct horse")
    assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert first != second  # salted
    assert await passwords.verify(first, "correct horse")
    assert not await passwords.verify(first, "wrong horse")
    assert not await passwords.verify("not a hash", "correct horse")
