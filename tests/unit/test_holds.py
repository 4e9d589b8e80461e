"""What counts as a failed login, and whose account a hold covers."""

from __future__ import annotations

from tcmd.health.holds import account
from tcmd.health.patterns import auth_failure, match_error

SCREEN_401 = (
    "> do the thing\n"
    'API Error: 401 {"type":"error","error":{"type":"authentication_error",'
    '"message":"invalid x-api-key"}}\n'
)


def test_a_401_is_a_failed_login_from_the_hook_or_the_screen() -> None:
    assert auth_failure("authentication_failed")
    assert not auth_failure("rate_limit") and not auth_failure("server_error")
    problem = match_error(SCREEN_401)
    assert problem is not None and problem.startswith("authentication: API Error: 401")
    assert auth_failure(None, problem)
    assert auth_failure(None, match_error("Please run /login to continue\n"))
    assert not auth_failure(None, match_error("API Error: 529 overloaded\n"))


def test_every_claude_instance_shares_one_account() -> None:
    assert account("claude", "spec_1_1_1") == account("claude", "exec_1") == "agent:claude"
    assert account("shell", "exec_1") == "exec_1"  # a shell agent has no shared login
