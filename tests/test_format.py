"""FORMAT.md, segmentlog/_format.py and csrc/segmentlog.h name the same numbers.

Categories: the C header's #defines against the Python constants (parsed from the header
text, and, when the C core is built, read back from the compiled library); the byte-level
example of FORMAT.md, pinned as EXAMPLE_SEGMENT and rebuilt by both backends and by the
segment header helper; the scan status table of FORMAT.md against SCAN_STATUS_NAMES.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

from segmentlog import _format, _pure

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "csrc" / "segmentlog.h"
FORMAT_MD = ROOT / "FORMAT.md"

# FORMAT.md, "Byte-level example": segment base 0, b"hello" (seq 0), b"" (seq 1), then zero
# space to the end of the sixth 16-byte row. Computed once from the reference backend;
# FORMAT.md shows the same bytes. Regenerate only on a format change (a new version).
EXAMPLE_SEGMENT = bytes.fromhex(
    "5345474c4f471a0a0100000008000000"  # magic, version 1, align 8
    "000000000000000000000000e1b51ae4"  # base_seq 0, reserved, header_crc
    "d35ca55a050000000000000000000000"  # marker, length 5, seq 0
    "0000000006ca69e868656c6c6f000000"  # flags, crc, "hello", padding
    "d35ca55a000000000100000000000000"  # marker, length 0, seq 1
    "000000000d0982b50000000000000000"  # flags, crc, zero space
)

# C #define -> the Python constant it must equal.
C_TO_PY = {
    "SL_FORMAT_VERSION": "FORMAT_VERSION",
    "SL_SEGMENT_MAGIC": "SEGMENT_MAGIC",
    "SL_SEGMENT_HEADER_SIZE": "SEGMENT_HEADER_SIZE",
    "SL_FRAME_MARKER": "FRAME_MARKER",
    "SL_FRAME_HEADER_SIZE": "FRAME_HEADER_SIZE",
    "SL_FRAME_CRC_COVERS": "FRAME_CRC_COVERS",
    "SL_FRAME_ALIGN": "FRAME_ALIGN",
    "SL_MAX_PAYLOAD": "MAX_PAYLOAD",
}

_DEFINE = re.compile(r"^#define\s+(SL_[A-Z0-9_]+)\s+(.+?)\s*(?:/\*.*)?$")
_ENUMERATOR = re.compile(r"^(SL_[A-Z0-9_]+)\s*=\s*(-?\s*\d+),?\s*(?:/\*.*)?$")


def _c_value(text: str) -> int | bytes:
    """The value of a simple C constant: an integer literal (hex, suffix, parenthesised
    negative) or a string literal with escapes."""
    text = text.strip()
    if text.startswith('"'):
        value = ast.literal_eval("b" + text)  # C and Python agree on \x1a and \n
        assert isinstance(value, bytes)
        return value
    match = re.fullmatch(r"\(?\s*(-?)\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*\)?", text)
    assert match, f"cannot parse C constant {text!r}"
    return int(match.group(1) + match.group(2), 0)


def header_defines() -> dict[str, int | bytes]:
    """Every value-like #define of csrc/segmentlog.h (macros with arguments excluded) and
    every enumerator (the status codes)."""
    out: dict[str, int | bytes] = {}
    for line in HEADER.read_text().splitlines():
        match = _DEFINE.match(line.strip()) or _ENUMERATOR.match(line.strip())
        if match:  # SL_FRAME_SIZE(length) does not match
            out[match.group(1)] = _c_value(match.group(2))
    return out


def test_c_header_format_constants_equal_python_constants() -> None:
    defines = header_defines()
    for c_name, py_name in C_TO_PY.items():
        assert defines[c_name] == getattr(_format, py_name), c_name
    assert defines["SL_SEGMENT_HEADER_SIZE"] == _format.SEGMENT_HEADER.size
    assert defines["SL_FRAME_HEADER_SIZE"] == _format.FRAME_HEADER.size


def test_c_header_scan_statuses_equal_python_statuses() -> None:
    defines = header_defines()
    c_statuses = {
        name.removeprefix("SL_"): value
        for name, value in defines.items()
        if name.startswith("SL_SCAN_")
    }
    py_statuses = {
        name: getattr(_format, name)
        for name in dir(_format)
        if name.startswith("SCAN_") and name != "SCAN_STATUS_NAMES"
    }
    assert c_statuses == py_statuses
    assert sorted(py_statuses.values()) == sorted(_format.SCAN_STATUS_NAMES)


def test_pure_backend_copies_of_c_return_codes_equal_the_header() -> None:
    # The pure backend answers with the C core's codes (its cursor refuses with
    # SL_ERR_CLOSED, as the native one does).
    defines = header_defines()
    assert defines["SL_ERR_CLOSED"] == _pure.ERR_CURSOR_CLOSED


def test_status_codes_are_distinct_and_only_failures_are_negative() -> None:
    """SegmentLog's fast paths read a negative answer of the cursor as "refused": every
    failure is negative, SL_OK is 0, the answers that are not failures are positive."""
    defines = header_defines()
    statuses = {k: v for k, v in defines.items()
                if k == "SL_OK" or k.startswith(("SL_ERR_", "SL_NOT_"))}
    assert statuses["SL_OK"] == 0
    assert len(set(statuses.values())) == len(statuses) >= 9
    assert all(isinstance(v, int) and v < 0 for k, v in statuses.items() if "_ERR_" in k)
    assert all(isinstance(v, int) and v > 0 for k, v in statuses.items() if "_NOT_" in k)


def test_compiled_c_core_carries_the_header_constants() -> None:
    try:
        from segmentlog._native import lib
    except ImportError as exc:
        pytest.skip(f"C core not built ({exc}); the header text is checked above")
    for name, value in header_defines().items():
        if isinstance(value, int) and hasattr(lib, name):
            assert getattr(lib, name) == value, name
    assert lib.SL_FRAME_MARKER == _format.FRAME_MARKER


def test_c_frame_size_macro_matches_python_frame_size() -> None:
    try:
        from segmentlog._native import ffi, lib
    except ImportError as exc:
        pytest.skip(f"C core not built ({exc})")
    dst = ffi.new("char[]", 256)
    end = ffi.new("uint64_t *")
    for length in range(0, 200):  # sl_frame_one's end is off + SL_FRAME_SIZE(length)
        payload = bytes(length)
        assert lib.sl_frame_one(dst, 256, 0, payload, length, 0, end) == lib.SL_OK
        assert end[0] == _format.frame_size(length)


def _backends() -> list[ModuleType]:
    mods: list[ModuleType] = [_pure]
    try:
        from segmentlog import _nativebackend
    except ImportError:
        return mods
    return [*mods, _nativebackend]


def test_example_segment_is_what_each_backend_writes() -> None:
    from segmentlog.segment import encode_header

    header = _format.SEGMENT_HEADER.pack(
        _format.SEGMENT_MAGIC, _format.FORMAT_VERSION, _format.FRAME_ALIGN, 0, 0, 0
    )[:28]
    assert encode_header(0) == EXAMPLE_SEGMENT[:32]
    assert header == EXAMPLE_SEGMENT[:28]
    for impl in _backends():
        assert impl.crc32c(header).to_bytes(4, "little") == EXAMPLE_SEGMENT[28:32], impl.NAME
        batch = bytearray(96)
        batch[:32] = encode_header(0)
        assert impl.frame_batch_into(batch, 32, [b"hello", b""], 0) == 88
        one = bytearray(b"\xee" * 96)  # stale bytes: padding is written as zeros
        one[:32], one[88:] = encode_header(0), bytes(8)
        assert impl.frame_into(one, impl.frame_into(one, 32, b"hello", 0), b"", 1) == 88
        assert bytes(batch) == bytes(one) == EXAMPLE_SEGMENT, impl.NAME
        r = impl.scan(EXAMPLE_SEGMENT, 32, 96, 0, 10)
        assert r[:5] == (88, 2, 2, 5, _format.SCAN_ZERO)
        assert list(r.offsets) == [56, 88] and list(r.lengths) == [5, 0]


def test_format_md_example_shows_example_segment() -> None:
    text = FORMAT_MD.read_text()
    block = text.split("## Byte-level example", 1)[1].split("```", 2)[1]
    rows = [line for line in block.splitlines() if re.match(r"^[0-9a-f]{6}  ", line)]
    shown = b""
    for row in rows:
        offset, hexpart = int(row[:6], 16), row[8:56]
        assert offset == len(shown), row
        shown += bytes.fromhex(hexpart)
    assert shown == EXAMPLE_SEGMENT


def test_format_md_scan_table_lists_every_status_in_order() -> None:
    text = FORMAT_MD.read_text().split("## Scanning", 1)[1]
    names = re.findall(r"^\| ([a-z_]+) \|", text, flags=re.MULTILINE)
    names = [n for n in names if n != "status"]
    wanted = [_format.SCAN_STATUS_NAMES[k] for k in sorted(_format.SCAN_STATUS_NAMES)]
    assert names == wanted[1:]  # "ok" is not a stop for damage and is not in the table


def _build_script() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_native", ROOT / "segmentlog" / "_build_native.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    here = os.getcwd()
    os.chdir(ROOT)  # the script names its sources from the project root, as setuptools runs it
    try:
        spec.loader.exec_module(build)
    finally:
        os.chdir(here)
    return build


TEST_HOOKS = {"sl_crc32c_force_portable", "sl_commit_fail_next"}


def test_cffi_declarations_are_derived_from_the_header_and_name_every_export() -> None:
    # The cdef once was an 84-line hand copy of segmentlog.h that nothing checked.
    build = _build_script()
    shipped = build.cdef_from_header(HEADER.read_text())
    testing = build.cdef_from_header(HEADER.read_text(), testing=True)
    exported, hooks = set(), set()
    for source in build.SOURCES:
        text = (ROOT / source).read_text()
        # Non-static function definitions at the start of a line: the library's exports;
        # those inside "#ifdef SL_TESTING" exist only in the tests' build.
        found = r"^(?!static)[A-Za-z_][\w \*]*?\b(sl_\w+)\("
        exported |= set(re.findall(found, text, re.M))
        for block in re.findall(r"^#ifdef SL_TESTING$(.*?)^#(?:endif|else)", text, re.M | re.S):
            hooks |= set(re.findall(found, block, re.M))
    declared = set(re.findall(r"\b(sl_\w+)\(", shipped))
    assert exported, "no exported sl_ function found in the C sources"
    assert hooks == TEST_HOOKS, "the test hooks are not (all) under #ifdef SL_TESTING"
    assert exported - hooks <= declared, f"not declared: {sorted(exported - hooks - declared)}"
    assert not hooks & declared, "a test hook is declared to the shipped extension"
    assert exported <= set(re.findall(r"\b(sl_\w+)\(", testing))
    assert "/*" not in shipped and "#include" not in shipped
    # The binding's adapter is declared beside them, from its own source.
    assert build.cdef_of_glue(build.GLUE) == (
        "int64_t slpy_cursor_append(sl_cursor *c, const char *payload, uint64_t len);\n")


def test_shipped_extension_has_no_test_hooks(tmp_path: Path) -> None:
    """Build the extension as an install does (no SL_TESTING) and look at what it exports:
    neither cffi's lib nor the shared object's symbols may carry a test hook."""
    import ctypes
    import importlib.util
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the extension cannot be built here")
    build = _build_script()
    builder = build.make_builder("shipped_probe", testing=False, root=str(ROOT))
    so = builder.compile(tmpdir=str(tmp_path))
    spec = importlib.util.spec_from_file_location("shipped_probe", so)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lib = module.lib
    assert hasattr(lib, "sl_commit_append") and hasattr(lib, "slpy_cursor_append")
    for hook in sorted(TEST_HOOKS):
        assert not hasattr(lib, hook), hook
        with pytest.raises(AttributeError):
            getattr(ctypes.CDLL(so), hook)
    assert hasattr(ctypes.CDLL(so), "sl_commit_append")  # the probe itself sees symbols
    # The tests' build of the same script has them.
    assert set(re.findall(r"\b(sl_\w+)\(", build.cdef_from_header(
        HEADER.read_text(), testing=True))) >= TEST_HOOKS
