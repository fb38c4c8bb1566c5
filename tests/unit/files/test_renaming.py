"""Renaming and command rewriting: pure functions, no disk."""

from __future__ import annotations

import pytest

from comrade.files import FileError, FileRef, rename_plan, rewrite_command, unique_name

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def ref(name: str, sha: str = SHA_A, size: int = 1) -> FileRef:
    return FileRef(name=name, sha256=sha, size=size)


# (command, mapping, expected)
REWRITE_CASES = [
    pytest.param("cat data.txt", {"data.txt": "N"}, "cat N", id="plain"),
    pytest.param("data.txt", {"data.txt": "N"}, "N", id="whole-command"),
    pytest.param("data.txt | wc", {"data.txt": "N"}, "N | wc", id="at-start"),
    pytest.param("wc -l data.txt", {"data.txt": "N"}, "wc -l N", id="at-end"),
    pytest.param("cat 'data.txt'", {"data.txt": "N"}, "cat 'N'", id="single-quotes"),
    pytest.param('cat "data.txt"', {"data.txt": "N"}, 'cat "N"', id="double-quotes"),
    pytest.param("x=data.txt;y=(data.txt)", {"data.txt": "N"}, "x=N;y=(N)", id="punctuation"),
    pytest.param("<data.txt >out", {"data.txt": "N"}, "<N >out", id="redirection"),
    pytest.param(
        "cat data.txt data.txt; wc data.txt", {"data.txt": "N"}, "cat N N; wc N", id="several"
    ),
    pytest.param("cat mydata.txt", {"data.txt": "N"}, "cat mydata.txt", id="inside-word"),
    pytest.param("cat data.txt.bak", {"data.txt": "N"}, "cat data.txt.bak", id="longer-ext"),
    pytest.param("cat dir/data.txt", {"data.txt": "N"}, "cat dir/data.txt", id="in-a-dir"),
    pytest.param("cat data.txt_2", {"data.txt": "N"}, "cat data.txt_2", id="underscore-after"),
    pytest.param("cat -data.txt", {"data.txt": "N"}, "cat -data.txt", id="dash-before"),
    pytest.param("cat data.txt-", {"data.txt": "N"}, "cat data.txt-", id="dash-after"),
    pytest.param("cat data.txt.", {"data.txt": "N"}, "cat data.txt.", id="dot-after"),
    pytest.param("cat data.txt/", {"data.txt": "N"}, "cat data.txt/", id="slash-after"),
    pytest.param(
        "zcat a.txt.gz > a.txt",
        {"a.txt": "NA", "a.txt.gz": "NGZ"},
        "zcat NGZ > NA",
        id="prefix-of-another",
    ),
    pytest.param(
        "cat a.txt a.txt.gz",
        {"a.txt.gz": "NGZ", "a.txt": "NA"},
        "cat NA NGZ",
        id="prefix-order-independent",
    ),
    pytest.param("./x+y(1).txt", {"x+y(1).txt": "N"}, "./x+y(1).txt", id="regex-name-under-a-dir"),
    pytest.param("cat x+y(1).txt", {"x+y(1).txt": "N"}, "cat N", id="regex-plus-parens"),
    pytest.param("cat xxy(1).txt", {"x+y(1).txt": "N"}, "cat xxy(1).txt", id="plus-not-regex"),
    pytest.param("cat a*b?.csv", {"a*b?.csv": "N"}, "cat N", id="regex-star-question"),
    pytest.param("cat aab.csv", {"a*b?.csv": "N"}, "cat aab.csv", id="star-not-regex"),
    pytest.param("cat [z].dat", {"[z].dat": "N"}, "cat N", id="regex-brackets"),
    pytest.param("cat z.dat", {"[z].dat": "N"}, "cat z.dat", id="brackets-not-class"),
    pytest.param("cat in/x.txt", {"in/x.txt": "N"}, "cat N", id="path-with-dir"),
    pytest.param("cat /abs/x.txt", {"/abs/x.txt": "N"}, "cat N", id="absolute-path"),
    pytest.param("cat other/in/x.txt", {"in/x.txt": "N"}, "cat other/in/x.txt", id="deeper-path"),
    pytest.param("cp a b", {"a": "b", "b": "a"}, "cp b a", id="swap-one-pass-never-replaced-again"),
    pytest.param("cat a", {"a": "a b"}, "cat a b", id="replaced-text-not-rescanned"),
    pytest.param(r"cat a", {"a": r"\1\g<0>"}, r"cat \1\g<0>", id="backslashes-in-new-name"),
    pytest.param("cat data.txt", {"data.txt": "data.txt"}, "cat data.txt", id="identity-skipped"),
    pytest.param("cat data.txt", {}, "cat data.txt", id="empty-mapping"),
    pytest.param("cat data.txt", {"": "N"}, "cat data.txt", id="empty-old-name-skipped"),
    # The original's caveat, kept on purpose: a file named like a command word renames the word.
    pytest.param("cat cat", {"cat": "lf_x_cat"}, "lf_x_cat lf_x_cat", id="caveat-file-named-cat"),
]


@pytest.mark.parametrize(("command", "mapping", "expected"), REWRITE_CASES)
def test_rewrite_command(command: str, mapping: dict[str, str], expected: str) -> None:
    assert rewrite_command(command, mapping) == expected


@pytest.mark.parametrize(
    ("name", "sha", "expected"),
    [
        ("data.txt", SHA_A, "lf_aaaaaaaaaaaa_data.txt"),
        ("in/dir/data.tar.gz", SHA_B, "lf_bbbbbbbbbbbb_data.tar.gz"),
        ("/abs/x+y(1).txt", SHA_C, "lf_cccccccccccc_x+y(1).txt"),
        ("noext", SHA_A, "lf_aaaaaaaaaaaa_noext"),
    ],
)
def test_unique_name(name: str, sha: str, expected: str) -> None:
    assert unique_name(ref(name, sha)) == expected


def test_unique_name_differs_per_content_and_keeps_extension() -> None:
    a, b = unique_name(ref("x.csv", SHA_A)), unique_name(ref("x.csv", SHA_B))
    assert a != b
    assert a.endswith(".csv") and b.endswith(".csv")


def test_unique_name_long_basename_fits_and_keeps_extension() -> None:
    name = "n" * 250 + ".csv"
    new = unique_name(ref(name))
    assert len(new.encode()) <= 255
    assert new.startswith("lf_aaaaaaaaaaaa_n") and new.endswith(".csv")


@pytest.mark.parametrize("name", ["", ".", "..", "dir/"])
def test_unique_name_without_basename_rejected(name: str) -> None:
    with pytest.raises(FileError):
        unique_name(ref(name))


def test_rename_plan_renames() -> None:
    refs = [ref("a.txt", SHA_A), ref("in/a.txt", SHA_B), ref("b.csv", SHA_C)]
    assert rename_plan(refs) == {
        "a.txt": "lf_aaaaaaaaaaaa_a.txt",
        "in/a.txt": "lf_bbbbbbbbbbbb_a.txt",
        "b.csv": "lf_cccccccccccc_b.csv",
    }


def test_rename_plan_without_renaming_keeps_basenames() -> None:
    refs = [ref("a.txt", SHA_A), ref("in/b.csv", SHA_B)]
    plan = rename_plan(refs, rename=False)
    assert plan == {"a.txt": "a.txt", "in/b.csv": "b.csv"}
    # only the path with a directory is rewritten
    assert rewrite_command("paste a.txt in/b.csv", plan) == "paste a.txt b.csv"


def test_rename_plan_without_renaming_basename_clash() -> None:
    refs = [ref("a/x", SHA_A), ref("b/x", SHA_B)]
    with pytest.raises(FileError) as info:
        rename_plan(refs, rename=False)
    assert str(info.value) == (
        "necessary files 'a/x' and 'b/x' would both be placed as 'x'; "
        "turn renaming on or rename one"
    )
    # with renaming on they get different names
    plan = rename_plan(refs)
    assert plan["a/x"] != plan["b/x"]


def test_rename_plan_same_content_same_basename_is_no_clash() -> None:
    refs = [ref("x.txt", SHA_A), ref("./x.txt", SHA_A)]
    assert rename_plan(refs, rename=False) == {"x.txt": "x.txt", "./x.txt": "x.txt"}
    plan = rename_plan(refs)
    assert plan["x.txt"] == plan["./x.txt"] == "lf_aaaaaaaaaaaa_x.txt"


def test_rename_plan_empty() -> None:
    assert rename_plan([]) == {}
    assert rename_plan([], rename=False) == {}


def test_plan_and_rewrite_end_to_end() -> None:
    refs = [ref("a.txt", SHA_A), ref("a.txt.gz", SHA_B), ref("[z].dat", SHA_C)]
    plan = rename_plan(refs)
    command = "zcat a.txt.gz > a.txt && sort '[z].dat' mya.txt"
    assert rewrite_command(command, plan) == (
        "zcat lf_bbbbbbbbbbbb_a.txt.gz > lf_aaaaaaaaaaaa_a.txt "
        "&& sort 'lf_cccccccccccc_[z].dat' mya.txt"
    )
