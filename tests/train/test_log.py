"""train.log.git_sha: the provenance each run records says when the code was not a commit."""

import subprocess

from train import log as log_lib


def test_git_sha_marks_a_modified_tree_dirty(tmp_path):
  git = lambda *a: subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *a],
                                  cwd=tmp_path, check=True, capture_output=True, text=True)
  assert log_lib.git_sha(tmp_path) == "unknown"  # not a repository
  git("init", "-q")
  (tmp_path / "code.py").write_text("x = 1\n")
  git("add", "code.py")
  git("commit", "-qm", "one")
  sha = git("rev-parse", "HEAD").stdout.strip()
  assert log_lib.git_sha(tmp_path) == sha
  (tmp_path / "notes.txt").write_text("untracked files do not count\n")
  assert log_lib.git_sha(tmp_path) == sha
  (tmp_path / "code.py").write_text("x = 2\n")
  assert log_lib.git_sha(tmp_path) == sha + "-dirty"
