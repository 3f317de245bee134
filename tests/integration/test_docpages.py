"""tests/support/docpages.py, the runner of the executed pages: blocks share one shell, a ```text block is not run,
and a failing block is named by its first line and its line on the page."""

from __future__ import annotations

import os

import pytest
from support import docpages

PAGE = """# A page

```sh
x=41
```

```text
exit 3
```

Then:

```sh
# one more
x=$((x + 1))
test "$x" = 42
false
echo never
```
"""


def test_blocks_run_in_one_shell_and_a_failure_names_its_block(tmp_path):
    steps = docpages.command_blocks(PAGE)
    assert [(b.tag, b.line) for b in steps] == [("sh", 4), ("sh", 14)]
    assert [b.first_line for b in steps] == ["x=41", "# one more"]
    run = docpages.run_blocks("page.md", steps, cwd=tmp_path, env=dict(os.environ), timeout=60)
    assert run.returncode == 1 and run.started == 2 and "never" not in run.out
    with pytest.raises(AssertionError, match=r"block 2 of page\.md \(line 14: '# one more'\) failed \(exit 1\)"):
        run.check()


def test_a_block_past_the_deadline_fails_the_test_naming_it(tmp_path):
    steps = docpages.command_blocks("```sh\ntrue\n```\n\n```sh\nsleep 600\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"did not finish within 2 s; block 2 of p\.md \(line 6: "
                                                    r"'sleep 600'\)"):
        docpages.run_blocks("p.md", steps, cwd=tmp_path, env=dict(os.environ), timeout=2)


def test_console_blocks_keep_only_what_is_typed():
    (b,) = docpages.command_blocks("```console\n$ echo a\na\n$ echo b\nb\n```\n")
    assert b.body == "echo a\necho b\n" and b.line == 2
