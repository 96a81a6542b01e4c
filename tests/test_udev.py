"""The packaged udev rules cover every USB ID of every board family, in syntax udev reads."""
import re
from pathlib import Path

from station.families import FAMILIES
from station.udev import udev_rules

RULES = Path(__file__).resolve().parent.parent / "packaging" / "60-provisioning-station.rules"
LINE = re.compile(r'ATTRS\{idVendor\}=="([0-9a-f]{4})", ATTRS\{idProduct\}=="([0-9a-f|]+)", MODE="0660", '
                  r'GROUP="plugdev", TAG\+="uaccess", ENV\{ID_MM_DEVICE_IGNORE\}="1"$')


def covered(text: str) -> set[tuple[int, int]]:
    ids = set()
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            ids |= {(int(match[1], 16), int(pid, 16)) for pid in match[2].split("|")}
    return ids


def test_packaged_rules_are_the_generated_ones():
    assert RULES.read_text() == udev_rules(), "regenerate: python -m station.udev > " + str(RULES)


def test_every_familys_usb_ids_are_covered():
    wanted = {usb_id for family in FAMILIES.values() for usb_id in family.usb_ids}
    assert wanted and covered(RULES.read_text()) == wanted


def test_every_rule_line_is_well_formed():
    for line in RULES.read_text().splitlines():
        if line.startswith("ATTRS"):
            assert LINE.match(line), line
