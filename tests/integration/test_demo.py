"""``rebuno demo`` end to end on a small git checkout: fs runner, local tools, policy denials
(one by an argument predicate), an approval the demo grants, and the published git MCP server
hosted by the runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_demo_on_a_git_checkout(tmp_path: Path) -> None:
    pytest.importorskip("mcp_server_git")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("# A small project\n\nIt has one file.\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for cmd in (["init", "-q"], ["add", "README.md"], ["commit", "-qm", "Start the small project"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=git_env, timeout=30)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REBUNO_LOG_LEVEL": "warning", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "rebuno.cli", "demo", "--path", str(repo)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "hosting the git MCP server (mcp-server-git)" in out
    assert "step.completed" in out and '"tool_id":"git.git_log"' in out
    assert "git history:  1 recent commit (via the git MCP server on the runner), latest" in out
    assert "“Start the small project”" in out
    assert "denied as expected: shell.exec" in out
    # an argument predicate denies reading a secret; the report is saved once the demo approves
    assert "denied as expected: fs.read_file → policy denied: secrets stay on the runner (rule: no-secrets)" in out
    assert "step.approval_required" in out and "approving report.save" in out
    assert '"reason":"approval granted"' in out
    saved = out.split("report saved (after approval) to ")[1].split()[0]
    assert Path(saved).is_file()
    Path(saved).unlink()
