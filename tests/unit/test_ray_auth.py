"""Where the client's Ray token comes from, and that it never shows in a message."""

import pytest

from evol_ray import ray_auth


def test_token_sources_in_rays_order(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    assert ray_auth.find_token({"HOME": str(home)}) == ("from-home", f"the file {home / '.ray' / 'auth_token'}")
    assert ray_auth.find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(f)})[0] == "from-file"
    assert ray_auth.find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(f),
                                "RAY_AUTH_TOKEN": "from-env"}) == ("from-env", "$RAY_AUTH_TOKEN")
    assert ray_auth.find_token({"HOME": str(tmp_path / "empty")}) == (None, None)
    assert ray_auth.find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}) == (None, None)


def test_mode_set_to_token_only_when_a_token_is_found_and_no_mode_is_set(tmp_path):
    env = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "t"}
    assert ray_auth.use_token_if_found(env) == "$RAY_AUTH_TOKEN" and env["RAY_AUTH_MODE"] == "token"
    env = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"}
    assert ray_auth.use_token_if_found(env) is None and env["RAY_AUTH_MODE"] == "disabled"
    env = {"HOME": str(tmp_path)}
    assert ray_auth.use_token_if_found(env) is None and "RAY_AUTH_MODE" not in env


@pytest.mark.parametrize("env, words", [
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cr3t-token-value"}, "refused the token from $RAY_AUTH_TOKEN"),
    ({}, "no token was found"),
    ({"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE=disabled is set here"),
])
def test_init_errors_explained_without_the_token(tmp_path, env, words):
    secret = "s3cr3t-token-value"
    error = "AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
    msg = ray_auth.explain_init_error(RuntimeError(error), "10.0.0.1:6379", {"HOME": str(tmp_path), **env})
    assert words in msg and "10.0.0.1:6379" in msg and "RAY_AUTH_TOKEN" in msg and secret not in msg
    assert ray_auth.explain_init_error(RuntimeError("connection refused"), "x", {}) is None


def test_unreachable_job_server_is_named():
    msg = ray_auth.check_job_server("http://127.0.0.1:1", {"RAY_AUTH_TOKEN": "tok"}, timeout_s=2)
    assert msg.startswith("cannot reach the Ray job server at http://127.0.0.1:1") and "tok" not in msg


def test_an_auth_error_wrapped_by_ray_init_is_found():
    try:
        try:
            raise RuntimeError("Failed to connect to GCS. AuthenticationError: RPC error: InvalidAuthToken: "
                               "Authentication token is missing or incorrect")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
    except ConnectionError as e:
        msg = ray_auth.explain_init_error(e, "10.0.0.1:6379", {})
    assert msg and "requires token authentication" in msg
