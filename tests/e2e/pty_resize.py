"""Runs a command (kubectl exec -it ...) on a terminal that is resized mid-session. Run by
tests/e2e_streams.rs:

    python pty_resize.py ROWS COLS ROWS2 COLS2 -- COMMAND...

COMMAND starts on a new pty sized ROWS x COLS. Once "ROWS COLS" appears in its output, the pty is resized to
ROWS2 x COLS2 (the kernel signals SIGWINCH to COMMAND, which kubectl turns into a message on its resize
channel) and "go\\r" is typed; once "ROWS2 COLS2" appears, "done\\r" is typed and COMMAND must exit. Prints one
JSON object: COMMAND's exit code and the sizes seen, in order. Every wait is bounded (60 s); a timeout exits
non-zero with the output so far.
"""
import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time

rows, cols, rows2, cols2 = (int(v) for v in sys.argv[1:5])
assert sys.argv[5] == "--"
command = sys.argv[6:]


def winsize(fd, r, c):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", r, c, 0, 0))


pid, fd = pty.fork()
if pid == 0:
    winsize(0, rows, cols)
    os.execvp(command[0], command)

out = b""


def read_until(marker):
    """Reads the pty until `marker` is in the output (True) or it closes (False)."""
    global out
    deadline = time.time() + 60
    while marker is None or marker not in out:
        left = deadline - time.time()
        if left <= 0:
            sys.exit(f"pty_resize: no {marker!r} within 60 s; output: {out!r}")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the command exited and the pty closed
            chunk = b""
        if not chunk:
            if marker is None:
                return False
            sys.exit(f"pty_resize: closed before {marker!r}; output: {out!r}")
        out += chunk
    return True


first = f"{rows} {cols}".encode()
second = f"{rows2} {cols2}".encode()
read_until(first)
winsize(fd, rows2, cols2)
os.write(fd, b"go\r")
read_until(second)
os.write(fd, b"done\r")
read_until(None)
_, status = os.waitpid(pid, 0)
sizes = [line.strip().decode() for line in out.splitlines() if line.strip() in (first, second)]
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "sizes": sizes}))
