"""The one exception type users see: a one-line message that says what is wrong and what to do.

`io_error` turns an `OSError` (or a TensorFlow I/O error carrying the same OS message) into such a
line: the path, what the errno means, and what to do about it. docs/errors.md lists them all.
"""

from __future__ import annotations

import errno as _errno
import os


class SbrjobError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with code 2."""


# errno -> (what it means, what to do)
_ADVICE = {
    _errno.ENOSPC: ("no space left on device", "free space or choose another output_dir, then run again"),
    _errno.EDQUOT: ("disk quota exceeded", "free space or choose another output_dir, then run again"),
    _errno.EFBIG: ("file too large (the file-size limit, `ulimit -f`, or the filesystem's maximum)",
                   "raise the limit or choose another output_dir, then run again"),
    _errno.EROFS: ("read-only file system", "choose a writable output_dir"),
    _errno.EACCES: ("permission denied", "choose a directory you may write (output_dir) or fix its permissions"),
    _errno.EPERM: ("operation not permitted", "choose a directory you may write (output_dir) or fix its permissions"),
    _errno.EIO: ("input/output error (failing disk or network filesystem)", "check the device, then run again"),
    _errno.ENOTDIR: ("a path component is a file, not a directory", "remove that file or choose another path"),
    _errno.EISDIR: ("is a directory, not a file", "give the path of a file"),
    _errno.ENOENT: ("no such file or directory", "check the path"),
}

# What TensorFlow (which wraps OS errors in its own exception types) says for the same errnos.
_TF_TEXT = {
    "No space left on device": _errno.ENOSPC,
    "Disk quota exceeded": _errno.EDQUOT,
    "File too large": _errno.EFBIG,
    "Read-only file system": _errno.EROFS,
    "Permission denied": _errno.EACCES,
}


def _errno_name(code: int | None) -> str:
    return _errno.errorcode.get(code, f"errno {code}") if code else "no errno"


def io_error(err: BaseException, path: str | os.PathLike | None = None, doing: str = "writing",
             atomic: bool = True) -> SbrjobError | None:
    """A one-line SbrjobError for an OS-level failure, or None when `err` is not one.

    `path` is named when the error itself carries no file name (pyarrow's, TensorFlow's);
    `atomic`: the failed write was staged, so nothing partial is visible under the final name.
    """
    code, where = None, None
    if isinstance(err, OSError):
        code = err.errno
        where = err.filename
        if code is None:  # pyarrow: OSError("[Errno 28] Error writing bytes to file. Detail: ...")
            text = str(err)
            code = next((c for c in (_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG, _errno.EROFS, _errno.EACCES)
                         if f"[errno {c}]" in text.lower()), None)
            if code is None:
                code = next((c for t, c in _TF_TEXT.items() if t in text), None)
    elif type(err).__module__.startswith("tensorflow"):
        text = str(err)
        code = next((c for t, c in _TF_TEXT.items() if t in text), None)
        if code is None:
            return None
    else:
        return None
    where = str(where or path or "?")
    doing = doing.replace(f" {where}", "")  # "X: ... while writing X" says X once
    meaning, todo = _ADVICE.get(code, (None, None))
    if meaning is None:
        first = (str(getattr(err, "strerror", None) or err).strip().splitlines() or [""])[0][:200]
        meaning, todo = first or type(err).__name__, "check the path and the device, then run again"
    after = "nothing partial was published; " if atomic else ""
    return SbrjobError(f"{where}: {meaning} [{_errno_name(code)}] while {doing}; {todo} ({after}see docs/errors.md)")
