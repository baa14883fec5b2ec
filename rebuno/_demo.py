"""``rebuno demo``: the whole system on one machine, doing real work on a real directory.

Starts the embedded broker and a kernel (with the demo policy), a filesystem
runner as a separate process (``runners.fs``), and an agent that inspects the
directory: a remote tool on the runner walks and reads files, local tools in
the agent summarise them, two calls the policy denies (one by a rule on its
arguments: no secrets) show the agent handling denials, and saving the report
waits for a human's approval, which the demo's client grants. When the directory is a git checkout, the runner also hosts
the published git MCP server (``mcp-server-git``, from the ``dev`` extra) and
the agent reads the recent history through it — an MCP tool called through the
kernel like any other. Prints the report and the execution's full event trail.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from . import remote
from ._execution import execution
from ._logging import configure_logging
from ._server import EmbeddedServer
from ._tools import tool
from .agent import Agent
from .client import Client
from .errors import PolicyError

DEMO_POLICY = """\
# Policy of `rebuno demo`: the inspector may read files through the fs runner (never
# secrets, at most 1 MB at a time) and run its own analysis tools; saving the report
# needs a human's approval; shell access is denied; everything else falls to the default.
rules:
  - id: no-shell
    priority: 5
    when: {tool_id: "shell.*"}
    then: {decision: deny, reason: "shell access is not allowed for inspector agents"}
  - id: no-secrets
    priority: 8
    when:
      tool_id: "fs.read_file"
      arguments:
        - {field: path, pattern: '(^|/)(\\.env[^/]*|id_[a-z0-9]+|[^/]*\\.pem|[^/]*\\.key)$'}
    then: {decision: deny, reason: "secrets stay on the runner"}
  - id: fs-read-only
    priority: 10
    when:
      tool_ids: ["fs.walk", "fs.read_file", "fs.stat"]
      agent_id: inspector
      arguments:
        - {field: max_bytes, min: 1, max: 1000000}
    then: {decision: allow, reason: "read-only filesystem access", timeout_ms: 30000}
  - id: save-needs-approval
    priority: 12
    when: {tool_id: "report.save", agent_id: inspector}
    then: {decision: require_approval, reason: "writing a file needs a human's approval"}
  - id: git-history
    priority: 15
    when: {tool_ids: ["git.git_log", "git.git_status"], agent_id: inspector}
    then: {decision: allow, reason: "read-only git history through the runner's MCP server", timeout_ms: 30000}
  - id: local-analysis
    priority: 20
    when: {tool_id: "analyze.*"}
    then: {decision: allow, reason: "pure computation in the agent"}
default:
  decision: deny
  reason: "not covered by the demo policy"
"""

fs = remote.Tools("fs")
git = remote.Tools("git")
_DOC_NAMES = ("README.md", "README.rst", "README.txt", "README")


@tool("report.save")
def save_report(report: dict) -> str:
    """Write the report as JSON to a file in the temporary directory; returns its path."""
    fd, path = tempfile.mkstemp(prefix="rebuno-demo-report-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2, default=str)
    return path


@tool("analyze.summarize")
def summarize(files: list[dict]) -> dict:
    """Totals per file extension and the largest files, from a list of {path, size_bytes}."""
    by_ext: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"files": 0, "bytes": 0})
    for f in files:
        ext = Path(f["path"]).suffix.lower() or "(none)"
        by_ext[ext]["files"] += 1
        by_ext[ext]["bytes"] += int(f["size_bytes"])
    top = sorted(by_ext.items(), key=lambda kv: (-kv[1]["files"], kv[0]))[:8]
    largest = sorted(files, key=lambda f: -int(f["size_bytes"]))[:5]
    return {"files": len(files), "bytes": sum(int(f["size_bytes"]) for f in files),
            "by_extension": dict(top), "largest": largest}


@tool("analyze.text_stats")
def text_stats(text: str) -> dict:
    """Lines, words and the first heading of a text."""
    lines = text.splitlines()
    heading = next((ln.lstrip("# ").strip() for ln in lines if ln.strip()), "")
    return {"lines": len(lines), "words": len(text.split()), "first_line": heading[:120]}


async def inspect_directory(max_entries: int = 5000) -> dict:
    """The demo agent's handler: inspect the runner's directory through the kernel."""
    listing = await fs["fs.walk"](max_entries=max_entries)
    summary = await summarize(files=listing["files"])
    paths = {f["path"] for f in listing["files"]}
    doc_path = next((n for n in _DOC_NAMES if n in paths), None)
    if doc_path is None and summary["largest"]:
        doc_path = summary["largest"][-1]["path"]
    doc = None
    if doc_path:
        read = await fs["fs.read_file"](path=doc_path, max_bytes=200_000)
        doc = {"path": doc_path, **await text_stats(text=read["text"])}
    history = None
    if "git.git_log" in git:  # the runner hosts the git MCP server (a git checkout)
        history = _commits(await git["git.git_log"](repo_path=listing["root"], max_count=5))
    denied = []
    for tool_id, arguments in (("shell.exec", {"command": "rm -rf ."}),
                               ("fs.read_file", {"path": ".env", "max_bytes": 4096})):
        try:
            await execution.invoke_tool(tool_id, arguments)
        except PolicyError as exc:
            denied.append({"tool_id": tool_id, "rule_id": exc.rule_id, "error": exc.message})
    report = {"root": listing["root"], "truncated": listing["truncated"], "summary": summary, "document": doc,
              "history": history, "denied_calls": denied}
    report["saved_to"] = await save_report(report=report)  # held until a human approves
    return report


def _commits(log: Any) -> list[dict]:
    """Commits (short id, subject) from mcp-server-git's ``git_log`` text."""
    commits: list[dict] = []
    for line in str(log).splitlines():
        if m := re.match(r"Commit: ([0-9a-f]{7,40})$", line):
            commits.append({"commit": m.group(1)[:7], "subject": ""})
        elif (m := re.match(r"Message: (.*)$", line)) and commits and not commits[-1]["subject"]:
            commits[-1]["subject"] = m.group(1).strip()
    return commits


def _git_checkout(root: Path) -> bool:
    """Whether the demo can host mcp-server-git for ``root``: the server is installed (``dev``
    extra), ``git`` is on PATH and ``root`` is the top of a git work tree."""
    if importlib.util.find_spec("mcp_server_git") is None or shutil.which("git") is None:
        return False
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return top.returncode == 0 and Path(top.stdout.strip()).resolve() == root


def _short(value: Any, width: int = 90) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_event(e) -> None:
    step = f" step=…{e.step_id[-8:]}" if e.step_id else ""
    payload = {k: v for k, v in __import__("msgspec").to_builtins(e.payload).items()
               if k not in ("deadline", "session_id", "consumer_id", "job_id")}
    print(f"  [{e.sequence:>2}] {e.timestamp:%H:%M:%S.%f}"[:-3] + f"  {e.type:<22}{step:<15} {_short(payload)}",
          flush=True)


def _print_report(out: dict) -> None:
    s = out["summary"]
    print(f"\nInspected {out['root']}: {s['files']} files, {s['bytes']:,} bytes"
          + (" (listing truncated)" if out["truncated"] else ""))
    print("  by extension: " + ", ".join(f"{ext} {v['files']} ({v['bytes']:,} B)" for ext, v in s["by_extension"].items()))
    print("  largest:      " + ", ".join(f"{f['path']} ({f['size_bytes']:,} B)" for f in s["largest"][:3]))
    if out["document"]:
        d = out["document"]
        print(f"  {d['path']}: {d['lines']} lines, {d['words']} words — “{d['first_line']}”")
    if out.get("history"):
        latest = out["history"][0]
        subject = latest["subject"] if len(latest["subject"]) <= 70 else latest["subject"][:69] + "…"
        n = len(out["history"])
        print(f"  git history:  {n} recent commit{'s' if n > 1 else ''} (via the git MCP server on the runner), "
              f"latest {latest['commit']} “{subject}”")
    for d in out.get("denied_calls", []):
        print(f"  denied as expected: {d['tool_id']} → {d['error']}")
    if out.get("saved_to"):
        print(f"  report saved (after approval) to {out['saved_to']}")


async def run_demo(path: str, keep_logs: bool = False) -> int:
    """Run the demo end to end; returns the process exit code (0 on a completed execution)."""
    configure_logging("debug" if keep_logs else "warning", "text")
    root = Path(path).resolve()
    if not root.is_dir():
        print(f"rebuno demo: {root} is not a directory", file=sys.stderr)
        return 2
    import nats

    from kernel import Kernel
    from kernel.policy import policy_from_sources
    from schemas import Names

    print("Starting an embedded NATS server with JetStream, a kernel, a filesystem runner and an agent…")
    server = EmbeddedServer().start()
    runner_proc = None
    nc = None
    kernel = None
    scratch = tempfile.TemporaryDirectory(prefix="rebuno-demo-")
    try:
        nc = await nats.connect(server.url, name="rebuno-demo-kernel")
        kernel = Kernel(nc, Names(), policy_from_sources({"": DEMO_POLICY}, "demo-policy.yaml"))
        await kernel.start()
        env = {**os.environ, "REBUNO_URL": server.url, "REBUNO_LOG_LEVEL": os.environ.get("REBUNO_LOG_LEVEL", "warning"),
               "REBUNO_LOG_FORMAT": "text"}
        runner_cmd = [sys.executable, "-m", "runners.fs", "--root", str(root), "--runner-id", "fs"]
        with_git = _git_checkout(root)
        if with_git:  # the same runner hosts the published git MCP server, confined to this checkout
            config = Path(scratch.name) / "mcp-servers.json"
            config.write_text(json.dumps({"mcpServers": {"git": {
                "command": sys.executable, "args": ["-m", "mcp_server_git", "--repository", str(root)]}}}))
            runner_cmd += ["--mcp-config", str(config)]
        runner_proc = subprocess.Popen(runner_cmd, env=env)
        async with Client(server.url) as client:
            deadline = time.monotonic() + 30
            while (len(await client.list_tools("fs")) < 3
                   or with_git and not any(t.id == "git.git_log" for t in await client.list_tools("git"))):
                if runner_proc.poll() is not None or time.monotonic() > deadline:
                    print("rebuno demo: the filesystem runner did not come up", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.1)
            print(f"  broker  {server.url}\n  runner  fs (pid {runner_proc.pid}) serving "
                  f"{', '.join(t.id for t in await client.list_tools('fs'))} for {root}")
            if with_git:
                print(f"          and hosting the git MCP server (mcp-server-git): "
                      f"{len(await client.list_tools('git'))} tools, git.git_log allowed by policy")
            else:
                print("          (no git MCP server: not the top of a git checkout, git missing, or mcp-server-git "
                      "not installed)")
            agent = Agent("inspector", kernel_url=server.url)
            agent_task = asyncio.create_task(agent.run_async(inspect_directory))
            await asyncio.wait_for(agent.ready.wait(), 30)
            print("  agent   inspector (local tools: analyze.summarize, analyze.text_stats, report.save)\n")
            print("Event trail of the execution:")
            started = time.perf_counter()
            async def on_event(e) -> None:
                _print_event(e)
                if e.type == "step.approval_required":  # the demo's human in the loop says yes
                    print(f"       ↳ approving {e.payload.tool_id} (as `rebuno approve {e.execution_id}` would)",
                          flush=True)
                    await client.approve(e.execution_id, e.step_id, reason="reviewed by the demo")

            final = await client.run_until_complete("inspector", {"max_entries": 5000}, labels={"demo": "true"},
                                                    on_event=on_event)
            elapsed = time.perf_counter() - started
            agent.stop()
            await agent_task
        print(f"\nExecution {final.id} {final.status.value} in {elapsed * 1000:.0f} ms")
        if final.status.value != "completed":
            print(f"  error: {final.error}", file=sys.stderr)
            return 1
        _print_report(final.output)
        return 0
    finally:
        if runner_proc is not None and runner_proc.poll() is None:
            runner_proc.terminate()
            try:
                runner_proc.wait(10)
            except subprocess.TimeoutExpired:
                runner_proc.kill()
        if kernel is not None:
            await kernel.stop()
        if nc is not None:
            await nc.close()
        server.stop()
        scratch.cleanup()
        structlog.get_logger("rebuno.demo").debug("demo stopped")
