"""`station setup` against a temporary root: it installs the rules, the group membership and the menu entry,
says what it changed and how to undo it, and `--remove` puts every file back as it was."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli import main
from station.host_setup import DESKTOP, ICON, METAINFO, RECORD, RULES, group_members
from station.udev import GROUP, udev_rules

OLD_METAINFO = "<component>an older package's metadata</component>\n"


@pytest.fixture
def root(tmp_path) -> Path:
    """A small system: alice and bob, the plugdev group with bob in it, and an older AppStream file."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"
                                     "bob:x:1001:1001::/home/bob:/bin/sh\n")
    (root / "etc/group").write_text(f"root:x:0:\n{GROUP}:x:46:bob\nalice:x:1000:\nbob:x:1001:\n")
    (root / METAINFO).parent.mkdir(parents=True)
    (root / METAINFO).write_text(OLD_METAINFO)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    # usermod keeps its own backups (etc/group-); they are the tool's, not a change setup made
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and not (p.parent == root / "etc" and p.name.endswith("-"))}


def setup(root: Path, *args: str):
    result = CliRunner().invoke(main, ["setup", "--root", str(root), *args])
    return result.exit_code, result.output


def test_setup_installs_rules_group_and_menu_entry_and_says_so(root):
    code, said = setup(root, "--user", "alice")
    assert code == 0, said
    assert (root / RULES).read_text() == udev_rules()
    assert group_members(root, GROUP) == ["bob", "alice"]
    desktop = (root / DESKTOP).read_text()
    exec_line = next(line for line in desktop.splitlines() if line.startswith("Exec="))
    assert exec_line.endswith(" gui") and "Exec=station-gui" not in desktop and "Icon=provisioning-station" in desktop
    assert (root / ICON).read_text().startswith("<svg") and "io.github.provisioning_station" in \
        (root / METAINFO).read_text()
    assert f"installed {root / RULES}" in said and f"replaced {root / METAINFO}" in said
    assert f"added alice to the group '{GROUP}'" in said
    assert "udev not reloaded" in said  # a root that is not the running system: its udev is left alone
    assert "undo all of it with: sudo station setup --remove" in said


def test_remove_puts_everything_back(root):
    before = snapshot(root)
    assert setup(root, "--user", "alice")[0] == 0
    code, said = setup(root, "--user", "alice")  # a second run changes nothing and keeps the first record
    assert code == 0 and f"unchanged {root / RULES}" in said and "alice is already in the group" in said
    code, said = setup(root, "--remove")
    assert code == 0, said
    assert snapshot(root) == before
    assert (root / METAINFO).read_text() == OLD_METAINFO and not (root / RULES).exists()
    assert group_members(root, GROUP) == ["bob"]
    assert f"removed {root / RULES}" in said and f"took alice out of the group '{GROUP}'" in said
    assert not (root / RECORD).exists()


def test_a_user_already_in_the_group_stays_there_after_remove(root):
    assert setup(root, "--user", "bob")[0] == 0
    assert setup(root, "--remove")[0] == 0
    assert group_members(root, GROUP) == ["bob"]


def test_an_unknown_user_is_refused_in_one_line_and_remove_still_undoes_the_files(root):
    before = snapshot(root)
    code, said = setup(root, "--user", "mallory")
    assert code == 1 and "could not add mallory to the group" in said and "--user NAME" in said
    assert "Traceback" not in said
    assert setup(root, "--remove")[0] == 0
    assert snapshot(root) == before


def test_remove_without_setup_says_so(root):
    code, said = setup(root, "--remove")
    assert code == 1 and "nothing to remove" in said and str(root / RECORD) in said


def test_without_root_it_prints_the_sudo_line_and_touches_nothing(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["setup"])
    assert result.exit_code == 1
    assert "needs root; run:" in result.output and "sudo " in result.output and " setup" in result.output
