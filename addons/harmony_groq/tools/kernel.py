"""The program a container runs inside the sandbox: a small stateful notebook kernel.

It runs under the sandbox's own Python (``CODE_PYTHON``, stdlib only) and reads one JSON request
per line on its stdin: ``{"code": …, "timeout": s, "output_limit": bytes}``; it answers one JSON
line on its stdout. Variables live in one namespace for the container's life, as in the Jupyter
notebook gpt-oss was trained with; a last bare expression is shown as Jupyter shows it. The
code's stdout and stderr are redirected at the file-descriptor level (child processes
included) into files on the sandbox's ``/tmp``, so the protocol pipes never carry its output and
the answer holds only the first ``output_limit`` bytes of each, with the total size.
"""

import ast
import contextlib
import json
import os
import signal
import sys
import traceback


class ExecutionTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise ExecutionTimeout("execution timed out")


def _head(fd, limit):
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, limit) if limit else b""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return data.decode("utf-8", "replace"), size


def _run(code, namespace):
    tree = ast.parse(code, "<cell>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:
        value = eval(compile(last, "<cell>", "eval"), namespace)
        if value is not None:
            print(repr(value))


def main():
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    out = os.open("/tmp/.stdout", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open("/tmp/.stderr", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(err, 2)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full file fails the write, not the kernel
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for line in requests:
        request = json.loads(line)
        return_code, timed_out = 0, False
        signal.setitimer(signal.ITIMER_REAL, request["timeout"])
        try:
            _run(request["code"], namespace)
        except ExecutionTimeout:
            return_code, timed_out = 1, True
        except BaseException as error:  # noqa: BLE001 - the code's own error is its output
            return_code = 1
            frames = traceback.extract_tb(error.__traceback__)
            user = [frame for frame in frames if frame.filename == "<cell>"]
            lines = traceback.format_list(user) + traceback.format_exception_only(error)
            with contextlib.suppress(OSError):
                sys.stderr.write("Traceback (most recent call last):\n" + "".join(lines))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        # fresh streams: a failed flush (a full file) or a closed stream stays in the past
        sys.stdout = open(1, "w", errors="replace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", errors="replace", closefd=False)  # noqa: SIM115
        stdout, stdout_bytes = _head(1, request["output_limit"])
        stderr, stderr_bytes = _head(2, request["output_limit"])
        answers.write(json.dumps({
            "stdout": stdout, "stderr": stderr, "stdout_bytes": stdout_bytes,
            "stderr_bytes": stderr_bytes, "return_code": return_code,
            "timed_out": timed_out}) + "\n")
        answers.flush()


main()
