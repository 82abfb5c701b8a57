"""File names the nodes take from users (save_name, generator_name, regression_pairs): pure string and
path logic, checked for POSIX and Windows alike, so a name that stays in its folder on Linux also stays
there on Windows. No ComfyUI import (the unit tier tests it): the nodes pass in ComfyUI's folders.

Errors are ``FileNameError`` (a ValueError) whose message starts with the input's name.
"""

from __future__ import annotations

import ntpath
import os
import posixpath

# what the nodes append to a save name's last part: "x" -> "x.safetensors", and "x.safetensors.tmp" while writing
LONGEST_SUFFIX = ".safetensors.tmp"
MAX_COMPONENT_BYTES = 255  # NAME_MAX of ext4, NTFS, APFS
MAX_NAME_BYTES = 1024  # the whole relative name; the folder's own path comes on top (PATH_MAX 4096)
# device names Windows reserves in every folder, with or without an extension ("con", "nul.txt", "COM1.pt")
WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
WINDOWS_FORBIDDEN = set('<>:"|?*')


class FileNameError(ValueError):
    """A file name input is wrong; the message starts with the input's name."""


EXAMPLE = "expected a file name such as 'dmd/my_generator' (relative, inside its folder)"


def is_absolute_anywhere(name: str) -> bool:
    """True for a name that is absolute, or has a drive or UNC prefix, on POSIX or on Windows ("/x", "\\\\x",
    "C:x", "C:\\x", "C:/x", "\\\\server\\share\\x"): joined onto a folder, such a name would replace it."""
    return bool(posixpath.isabs(name) or ntpath.isabs(name) or ntpath.splitdrive(name)[0])


def check_component(part: str, what: str, shown: str) -> None:
    """One folder or file name of a save name: a clear error for a name Windows or a file system refuses or
    maps elsewhere ("..", "con", "x.", "a:b", a part over 255 bytes)."""
    if part in (".", ".."):
        raise FileNameError(f"{what}: {EXAMPLE}; '.' and '..' are not allowed, got {shown}")
    if part.startswith("~"):
        raise FileNameError(f"{what}: a part may not start with '~' (a home folder), got {shown}")
    bad = sorted(c for c in set(part) if c in WINDOWS_FORBIDDEN or ord(c) < 32)
    if bad:
        raise FileNameError(
            f"{what}: the characters {''.join(bad)!r} are not allowed in file names (Windows refuses "
            f"them; ':' would name a drive or a data stream), got {shown}"
        )
    if part != part.rstrip(". "):
        raise FileNameError(f"{what}: a part may not end with a dot or a space (Windows drops them), got {shown}")
    if part.split(".")[0].rstrip(" ").lower() in WINDOWS_RESERVED:
        raise FileNameError(
            f"{what}: {part!r} is a device name reserved on Windows (con, prn, aux, nul, com1-9, lpt1-9), got {shown}"
        )
    if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES - len(LONGEST_SUFFIX):
        raise FileNameError(
            f"{what}: the part {part[:24]!r}... is {len(part.encode('utf-8'))} bytes; file systems allow "
            f"{MAX_COMPONENT_BYTES} per name, {MAX_COMPONENT_BYTES - len(LONGEST_SUFFIX)} before the "
            f"{LONGEST_SUFFIX!r} the node appends"
        )


def safe_save_name(save_name, what: str = "save_name", strip_suffix: str = ".safetensors") -> str:
    """A user's save name -> "dir/sub/name" (forward slashes, no suffix) that stays inside the folder it is
    joined onto, on POSIX and on Windows; a ``FileNameError`` naming ``what`` otherwise."""
    if not isinstance(save_name, str):
        raise FileNameError(f"{what}: expected a string, got {type(save_name).__name__}")
    shown = repr(save_name if len(save_name) <= 80 else save_name[:77] + "...")
    if "\x00" in save_name:
        raise FileNameError(f"{what}: the name holds a NUL byte, got {shown}")
    name = save_name.strip()
    if strip_suffix and name.lower().endswith(strip_suffix):
        name = name[: -len(strip_suffix)]
    if not name:
        raise FileNameError(f"{what}: {EXAMPLE}, got {shown}")
    if is_absolute_anywhere(name):
        raise FileNameError(f"{what}: {EXAMPLE}; absolute paths and drive letters are not allowed, got {shown}")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise FileNameError(f"{what}: the name is {len(name.encode('utf-8'))} bytes long, at most {MAX_NAME_BYTES}")
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    if not parts:
        raise FileNameError(f"{what}: {EXAMPLE}, got {shown}")
    for p in parts:
        check_component(p, what, shown)
    return "/".join(parts)


def check_listed_name(name, what: str) -> str:
    """A name picked from a folder's list (generator_name, regression_pairs): relative to that folder. Refuses
    what would leave it (absolute paths, drive letters, NUL, '..'); the name itself may be any file's name."""
    if not isinstance(name, str) or not name.strip():
        raise FileNameError(f"{what}: expected a file name from the list")
    shown = repr(name if len(name) <= 80 else name[:77] + "...")
    if "\x00" in name:
        raise FileNameError(f"{what}: the name holds a NUL byte, got {shown}")
    name = name.strip()
    if is_absolute_anywhere(name):
        raise FileNameError(
            f"{what}: expected a file name relative to its folder; absolute paths and drive letters are "
            f"not read, got {shown}"
        )
    if any(p == ".." for p in name.replace("\\", "/").split("/")):
        raise FileNameError(f"{what}: '..' is not allowed, got {shown}")
    return name


def inside(path: str, roots, what: str) -> str:
    """``path`` when it lies inside one of ``roots`` (lexically, after normalisation: the second line behind the
    name checks), else a ``FileNameError``. Links inside a root are followed as the user set them up."""
    p = os.path.normcase(os.path.abspath(path))
    for root in roots:
        r = os.path.normcase(os.path.abspath(root))
        try:
            if os.path.commonpath([p, r]) == r:
                return path
        except ValueError:  # another drive on Windows
            continue
    raise FileNameError(f"{what}: {os.path.basename(path)!r} resolves outside its folders")
