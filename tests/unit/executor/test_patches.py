"""The paths and modes of a patch come from git's own parse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from arc_common.errors import InvalidArgumentError
from services.executor.tools.patches import Change, plan


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "code" / "models"
    repo.mkdir(parents=True)
    (repo / "model.py").write_text("WIDTH = 64\n")
    (repo / "x y.py").write_text("A = 1\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "i"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True
        )
    return repo


def objects(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / ".git" / "objects").rglob("*") if p.is_file())


def test_renames_copies_modes_and_spaces_are_listed_whole(repo: Path) -> None:
    before = objects(repo)
    patch = (
        "diff --git a/model.py b/run.sh\nsimilarity index 100%\nrename from model.py\n"
        "rename to run.sh\n"
        "diff --git a/x y.py b/Makefile\nsimilarity index 100%\ncopy from x y.py\n"
        "copy to Makefile\n"
        "diff --git a/evil.sh b/evil.sh\nnew file mode 100755\nindex 0000000..e69de29\n"
        "diff --git a/x y.py b/x y.py\n--- a/x y.py\n+++ b/x y.py\n@@ -1 +1 @@\n-A = 1\n+A = 2\n"
    )
    checked = plan(patch, repo, "code/models")
    assert sorted(checked.changes, key=lambda c: c.path) == [
        Change("Makefile", "000000", "100644"),
        Change("evil.sh", "000000", "100755"),
        Change("model.py", "100644", "000000"),
        Change("run.sh", "000000", "100644"),
        Change("x y.py", "100644", "100644"),
    ]
    assert (checked.added, checked.removed) == (1, 1)
    assert objects(repo) == before  # the trial apply left nothing in the repository
    assert not (repo / "run.sh").exists() and (repo / "model.py").exists()


@pytest.mark.parametrize(
    "patch",
    [
        "diff --git a/l b/l\nnew file mode 0120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc\n",
        "diff --git a/tokens.json b/tokens.json\nnew file mode 100644\n--- /dev/null\n"
        "+++ b/tokens.json\n@@ -0,0 +1 @@\n+{}\n",
        'diff --git "a/\\377.py" "b/\\377.py"\nnew file mode 100644\n--- /dev/null\n'
        '+++ "b/\\377.py"\n@@ -0,0 +1 @@\n+X = 1\n',
        "not a patch at all\n",
        "",
    ],
    ids=["symlink", "reserved", "not-utf8", "no-diff", "empty"],
)
def test_refused_shapes(repo: Path, patch: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        plan(patch, repo, "code/models")
    assert info.value.field == "patch"
