"""Bearer tokens from a file of several, rotated with no restart and no failed request."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.auth import TokenCheck
from runtime.errors import SettingsError
from tests.enginekit import wait_for
from tests.runtime.conftest import Server, http, start_server

OLD, NEW, OTHER = "old-token-0123456789", "new-token-abcdefghij", "second-token-xyz"


def _write(path: Path, *tokens: str) -> None:
    """Replace the file the way an admin's editor does: a temp file renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# tokens, one a line\n" + "".join(t + "\n" for t in tokens))
    os.replace(tmp, path)


@pytest.fixture
def rotating(onnx_models_dir: Path, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    token_file = tmp_path / "tokens"
    _write(token_file, OLD, OTHER)
    s = start_server(onnx_models_dir, tmp_path / "data",
                     extra_env={"RUNTIME_TOKEN_FILE": str(token_file)})
    yield s, token_file
    s.stop()


def _meta(s: Server, auth: str | None) -> int:
    return http("GET", f"{s.url}/v2/models/mlp",
                headers={"Authorization": auth} if auth else {})[0]


def test_every_token_in_the_file_works_and_the_scheme_is_case_insensitive(
        rotating: tuple[Server, Path]) -> None:
    s, _ = rotating
    assert _meta(s, f"Bearer {OLD}") == 200
    assert _meta(s, f"Bearer {OTHER}") == 200
    assert _meta(s, f"bearer {OLD}") == 200
    assert _meta(s, f"BEARER   {OTHER}") == 200
    assert _meta(s, f"Bearer {OLD}x") == 401
    assert _meta(s, f"Basic {OLD}") == 401
    assert _meta(s, "Bearer") == 401
    assert _meta(s, "Bearer # tokens, one a line") == 401  # comments are not tokens
    assert _meta(s, None) == 401


def test_rotation_without_restart_or_a_failed_request(rotating: tuple[Server, Path]) -> None:
    s, token_file = rotating
    current = [OLD]
    failures: list[int] = []
    sent = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            code = _meta(s, f"Bearer {current[0]}")
            sent[0] += 1
            if code != 200:
                failures.append(code)
    t = threading.Thread(target=client)
    t.start()
    try:
        wait_for(lambda: sent[0] >= 20, 30, "requests with the old token")
        _write(token_file, OLD, NEW)  # 1. add the new token
        current[0] = NEW  # 2. the client moves at once: its first request must pass
        mark = sent[0]
        wait_for(lambda: sent[0] >= mark + 20, 30, "requests with the new token")
        _write(token_file, NEW)  # 3. remove the old one
        wait_for(lambda: _meta(s, f"Bearer {OLD}") == 401, 10, "the old token to stop working")
        mark = sent[0]
        wait_for(lambda: sent[0] >= mark + 20, 30, "more requests with the new token")
    finally:
        stop.set()
        t.join()
    assert failures == []
    assert _meta(s, f"Bearer {OTHER}") == 401  # removed with the rewrite
    assert s.proc.poll() is None


def test_a_token_file_cut_mid_rewrite_keeps_the_tokens_read_before(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"{OLD}\n")
    now = [0.0]
    check = TokenCheck(None, f, clock=lambda: now[0])
    assert check.accepts(f"Bearer {OLD}".encode())
    f.write_text("")  # truncated by an in-place rewrite
    now[0] += 5
    assert check.accepts(f"Bearer {OLD}".encode())
    f.write_text(f"{NEW}\n")
    assert check.accepts(f"Bearer {NEW}".encode())  # a miss looks at the file at once
    assert not check.accepts(f"Bearer {OLD}".encode())


def test_the_file_is_looked_at_no_more_than_once_a_second(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"{OLD}\n{NEW}\n")
    now = [100.0]
    check = TokenCheck(None, f, clock=lambda: now[0])
    assert check.accepts(f"Bearer {OLD}".encode())
    _write(f, NEW)
    now[0] += 0.5
    assert check.accepts(f"Bearer {OLD}".encode())  # not looked at yet: still accepted
    now[0] += 0.6
    assert not check.accepts(f"Bearer {OLD}".encode())
    assert check.accepts(f"Bearer {NEW}".encode())


def test_an_empty_token_file_is_refused_at_start(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("\n# only a comment\n")
    with pytest.raises(SettingsError, match="is empty"):
        TokenCheck(None, f)


def test_the_openapi_document_marks_the_bearer_scheme(rotating: tuple[Server, Path]) -> None:
    s, _ = rotating
    code, _, raw = http("GET", f"{s.url}/openapi.json", headers={"Authorization":
                                                                   f"bearer {OTHER}"})
    assert code == 200
    assert json.loads(raw)["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
