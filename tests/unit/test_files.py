"""nodes/files.py: the file names users give the DMD nodes stay inside their folders, on POSIX and on Windows.

Windows semantics are checked with ``ntpath`` here on Linux: a name is safe when joining it onto the folder with
``ntpath.join`` keeps the folder's prefix (a drive letter or an absolute name replaces it).
"""

from __future__ import annotations

import ntpath
import posixpath

import pytest

from comfyui_tempo.nodes import files

WIN_ROOT = "D:\\ComfyUI\\output\\dmd_generators"


def _refused(name: str, match: str | None = None) -> str:
    with pytest.raises(files.FileNameError) as e:
        files.safe_save_name(name)
    msg = str(e.value)
    assert msg.startswith("save_name: "), msg
    if match:
        assert match in msg, msg
    return msg


def test_module_imports_without_comfyui():
    import sys

    assert "folder_paths" not in sys.modules and "comfy" not in sys.modules
    assert issubclass(files.FileNameError, ValueError)


@pytest.mark.parametrize(
    "name, want",
    [
        ("dmd/generator", "dmd/generator"),
        ("dmd/generator.safetensors", "dmd/generator"),
        ("  my run  ", "my run"),
        ("a\\b\\c", "a/b/c"),
        ("qa/sub//double", "qa/sub/double"),
        ("qa/trailing/", "qa/trailing"),
        ("v1.5/gen.v2", "v1.5/gen.v2"),
        ("PROGRA~1", "PROGRA~1"),
        ("console", "console"),
        ("com10", "com10"),
        ("lpt", "lpt"),
        ("générateur", "générateur"),
    ],
)
def test_ordinary_names_pass(name, want):
    got = files.safe_save_name(name)
    assert got == want
    # joined onto the folder, on both systems, it stays under it
    assert ntpath.join(WIN_ROOT, *got.split("/")).startswith(WIN_ROOT + "\\")
    assert posixpath.join("/out", *got.split("/")).startswith("/out/")


@pytest.mark.parametrize(
    "name",
    [
        "/abs/dir/x",
        "/etc/passwd",
        "\\x",
        "\\\\server\\share\\x",
        "//server/share/x",
        "C:x",
        "C:\\Windows\\Temp\\x",
        "C:/x",
        "D:evil",
        "c:",
        "Z:\\",
    ],
)
def test_absolute_paths_and_drive_letters_are_refused(name):
    # on Windows each of these replaces the folder it is joined onto, or names another drive
    joined = ntpath.join(WIN_ROOT, name)
    assert not joined.startswith(WIN_ROOT + "\\") or ntpath.splitdrive(name)[0], joined
    _refused(name, "absolute paths and drive letters")


@pytest.mark.parametrize("name", ["../../x", "..\\x", "..\\..\\..\\x", "a/../../x", "./x", "a/./b", "", "   ", "/"])
def test_dot_parts_and_empty_names_are_refused(name):
    _refused(name)


@pytest.mark.parametrize(
    "name",
    [
        "con",
        "CON",
        "prn",
        "aux",
        "nul",
        "com1",
        "COM9",
        "lpt1",
        "lpt9",
        "con.txt",
        "nul.safetensors.x",
        "dmd/aux",
        "dmd/Com3.tar.gz",
        "con .txt",
    ],
)
def test_windows_device_names_are_refused(name):
    _refused(name, "reserved on Windows")


@pytest.mark.parametrize(
    "name", ["qa/x:stream", "gen.txt::$DATA", "a<b", "a>b", 'a"b', "a|b", "a?b", "a*b", "tab\there"]
)
def test_streams_and_characters_windows_refuses(name):
    _refused(name, "not allowed in file names")


@pytest.mark.parametrize("name", ["x.", "dmd/x .", "dmd./x", "dmd /x", "x..", "..."])
def test_trailing_dots_and_spaces_are_refused(name):
    # Windows drops them: "x." and "x" would be the same file, "dmd./x" lands in "dmd"
    _refused(name)


@pytest.mark.parametrize("name", ["~", "~/x", "~root/x", "dmd/~x"])
def test_home_folder_names_are_refused(name):
    _refused(name, "'~'")


def test_nul_byte_is_refused():
    _refused("dmd/a\x00b", "NUL")


def test_too_long_names_are_refused():
    _refused("a" * 300, "bytes")  # one part over NAME_MAX (the QA report's 300-character name)
    _refused("é" * 130, "bytes")  # 260 bytes in UTF-8: bytes count, not characters
    longest = "a" * (files.MAX_COMPONENT_BYTES - len(files.LONGEST_SUFFIX))
    assert files.safe_save_name(longest) == longest
    assert len((longest + files.LONGEST_SUFFIX).encode()) == files.MAX_COMPONENT_BYTES
    _refused(longest + "a", "bytes")
    _refused("/".join(["d" * 200] * 6), "bytes long")  # every part fits, the whole is over the bound


def test_non_strings_are_refused():
    with pytest.raises(files.FileNameError, match="^save_name: expected a string"):
        files.safe_save_name(None)


def test_other_input_names_are_used():
    with pytest.raises(files.FileNameError, match="^pairs_name: "):
        files.safe_save_name("C:x", what="pairs_name")


# ---------------------------------------------------------------------------- names picked from a list
@pytest.mark.parametrize("name", ["gen.safetensors", "dmd/gen.safetensors", "loras/a:b.safetensors", "con.safetensors"])
def test_listed_names_pass(name):
    # a file that exists in the folder may have any name its file system allows
    assert files.check_listed_name(name, "generator_name") == name


@pytest.mark.parametrize(
    "name",
    [
        "/some/dir/secret.safetensors",
        "/etc/passwd",
        "C:\\x.safetensors",
        "C:x.safetensors",
        "\\\\server\\share\\x.safetensors",
        "../../../outside/x.safetensors",
        "a/../../x",
        "a\\..\\..\\x",
        "x\x00.safetensors",
        "",
        "  ",
    ],
)
def test_listed_names_that_leave_the_folder_are_refused(name):
    with pytest.raises(files.FileNameError, match="^generator_name: "):
        files.check_listed_name(name, "generator_name")


def test_inside_is_a_second_line(tmp_path):
    root = tmp_path / "models" / "dmd_generators"
    other = tmp_path / "models" / "dmd_generators_other"
    ok = str(root / "dmd" / "x.safetensors")
    assert files.inside(ok, [str(other), str(root)], "generator_name") == ok
    for bad in (str(root / ".." / "secret.safetensors"), str(other) + "/x.safetensors", "/etc/passwd"):
        with pytest.raises(files.FileNameError, match="^generator_name: .*outside its folders"):
            files.inside(bad, [str(root)], "generator_name")
