"""What the command line prints, made safe in one place: every log record and the one-line error.

* **Secrets are redacted**: the ``user:password@`` of any URL (``mqtt://line:s3cret@broker/line1``,
  ``triton://u:p@host:8001/scorer``) is printed as ``user:***@``, wherever the URL appears in the text (an exception's
  message, a log line's argument).
* **Control characters are escaped**: a newline, carriage return, escape sequence or other C0/C1 control character in
  a file name (or anything else printed) is written as ``\\n``, ``\\r``, ``\\x1b``..., so a name cannot forge a second
  log line (a fake "model reload refused") in the log or the journal, nor recolour a terminal.

:class:`SafeFormatter` applies both to every record (its message, arguments and exception text); :func:`safe_line` is
the same for the CLI's one-line error. ``skipgan_edge.cli`` installs them; the library logs names as they are.
"""

from __future__ import annotations

import logging
import re

#: ``scheme://user:password@`` (or ``scheme://user@``: a token as the user name), up to the host.
_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@:?#]*)(?::(?P<password>[^\s/?#]*))?@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``mqtt://u:secret@h`` → ``mqtt://u:***@h``; a URL with
    only a user name (which may be a token) keeps nothing of it: ``https://token@h`` → ``https://***@h``."""

    def sub(m: re.Match[str]) -> str:
        if m.group("password") is None:
            return f"{m.group('scheme')}***@"
        return f"{m.group('scheme')}{m.group('user')}:***@"

    return _CREDENTIALS.sub(sub, text)


def escape_controls(text: str) -> str:
    """``text`` on one line: every control character (C0, DEL, C1, U+2028/U+2029) escaped as ``\\n``, ``\\r``, ``\\t`` or
    ``\\xNN`` / ``\\uNNNN``."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(0)) or (f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100
                                                           else f"\\u{ord(m.group(0)):04x}"), text)


def safe_line(text: str) -> str:
    """What the CLI may print of ``text``: credentials redacted, control characters escaped, one line."""
    return escape_controls(redact(text))


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose every line is :func:`safe_line`: the formatted message, arguments included, and
    an exception's text, each line of a traceback escaped on its own so a traceback stays readable."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\n".join(safe_line(line) for line in text.split("\n"))

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe_line(record.message)
        return super().formatMessage(record)


def install(level: int, fmt: str = "%(levelname)s %(message)s") -> None:
    """The CLI's logging: one handler on stderr whose lines are :class:`SafeFormatter`'s (replacing any earlier setup)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler], force=True)
