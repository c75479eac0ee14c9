"""Role names and ids: one table, ids 1.. in role order with 0 for padding, and errors that list the roles."""

import pytest

from textbooks.data import roles

# The roles of the phi-1 and phi-1.5 reports, typed here independently of textbooks.data.roles.
PAPER_ROLES = ("synthetic_textbooks", "code_textbooks", "code_exercises", "code_filtered", "web_filtered", "web_raw")


def test_roles_and_ids():
    assert roles.ROLES == PAPER_ROLES
    assert roles.ROLE_IDS == {role: i for i, role in enumerate(PAPER_ROLES, start=1)}
    assert roles.PAD_ROLE_ID == 0 and roles.PAD_ROLE_ID not in roles.ROLE_IDS.values()
    assert roles.ID_NAMES == ("padding", *PAPER_ROLES)
    assert [roles.role_name(roles.ROLE_IDS[r]) for r in PAPER_ROLES] == list(PAPER_ROLES)
    assert roles.role_name(0) == "padding"


@pytest.mark.parametrize("bad", [-1, 7, 99])
def test_unknown_role_id_is_an_error(bad):
    with pytest.raises(ValueError, match=f"unknown role id {bad}; ids are 1..6"):
        roles.role_name(bad)


def test_check_role():
    assert roles.check_role("web_raw") == "web_raw"
    with pytest.raises(ValueError, match="unknown data role 'textbooks'; known roles: synthetic_textbooks, "):
        roles.check_role("textbooks")
