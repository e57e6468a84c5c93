"""A zygote for the fault suite: a Python process that imports isovol once and forks the console script's entry
point (``isovol.workflows.cli.main``) for each command, so the bad-input table of 60+ requests costs milliseconds
a request instead of the half second of imports.  Shared by the tests and ``benchmarks/faults.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from faultkit import ENV, _group_alive, _temp


class Zygote:
    """A Python process that imports isovol once and forks the console script's entry point (``cli.main``) for each
    command: a refusal then costs milliseconds instead of the half second of imports, so the bad-input table of 60+
    requests stays fast.  Each command runs in its own session and folder with its stderr in a file, exactly as
    the console script would (``main`` is what it calls); commands that must be killed or raced use
    :class:`Launch` on the real script instead."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV)

    def run(self, args: list[str], cwd: str | os.PathLike, timeout: float = 60.0,
            stop_at: str | None = None) -> subprocess.CompletedProcess:
        """``isovol ARGS`` in ``cwd``; stopped (SIGKILL, code -9) after ``timeout`` s or once stderr shows
        ``stop_at`` (e.g. the line a run prints when it goes ahead)."""
        err, out = str(_temp("stderr")), str(_temp("stdout"))
        request = {"args": [str(a) for a in args], "cwd": str(cwd), "err": err, "out": out, "timeout": timeout,
                   "stop": stop_at}
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        code = int(json.loads(self.proc.stdout.readline())["code"])
        text, printed = Path(err).read_text(errors="replace"), Path(out).read_text(errors="replace")
        os.unlink(err)
        os.unlink(out)
        return subprocess.CompletedProcess(["isovol", *request["args"]], code, printed, text)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _zygote_child(req: dict) -> None:
    """In the forked child: become ``isovol ARGS`` run from ``cwd``, stderr and stdout into their files."""
    os.setsid()
    os.chdir(req["cwd"])
    os.dup2(os.open(req["err"], os.O_WRONLY | os.O_TRUNC), 2)
    os.dup2(os.open(req["out"], os.O_WRONLY | os.O_TRUNC), 1)
    sys.argv = ["isovol", *req["args"]]
    code: object = 0
    try:
        from isovol.workflows.cli import main

        main(req["args"])
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # what the console script does with an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _zygote() -> None:
    """The zygote's loop: one JSON request a line on stdin, one JSON answer ({"code": ...}) a line on stdout."""
    import isovol.deploy.clusters  # noqa: F401  (the imports every command pays for, paid once)
    import isovol.pipeline.io.readers  # noqa: F401
    import isovol.workflows.cli  # noqa: F401
    import isovol.workflows.upsample  # noqa: F401

    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _zygote_child(req)
        end, code = time.monotonic() + req["timeout"], None
        while code is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            stop = req["stop"] and req["stop"] in Path(req["err"]).read_text(errors="replace")
            if stop or time.monotonic() > end:
                os.killpg(pid, signal.SIGKILL)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                end = time.monotonic() + 30
                while _group_alive(pid) and time.monotonic() < end:
                    time.sleep(0.02)
            time.sleep(0.003)
        print(json.dumps({"code": code}), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote()
