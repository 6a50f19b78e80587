"""The accounts registry (CRM export): parsed on literal CSVs, every error names row and column."""

from __future__ import annotations

from datetime import date

import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.schemas.accounts import load_accounts

HEADER = "customer_id,name,segment,engagement_model,arr_usd,contract_start,renewal_date,entitled_devices,csm_owner,nps\n"
GOOD = "c-0001,Acme,smb,digital,12000,2026-01-01,2027-01-01,5,,\n"


def write(tmp_path, text):
    path = tmp_path / "accounts.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_rows(tmp_path):
    text = HEADER + GOOD + "c-0002,,enterprise,high_touch,900000,2025-06-01,2026-06-01,0,ann@example.com,-20\n"
    accounts = load_accounts(write(tmp_path, text))
    assert list(accounts) == ["c-0001", "c-0002"]
    acme = accounts["c-0001"]
    assert (acme.name, acme.segment, acme.arr_usd, acme.csm_owner, acme.nps) == ("Acme", "smb", 12000, None, None)
    assert acme.contract_start == date(2026, 1, 1) and acme.entitled_devices == 5
    other = accounts["c-0002"]
    assert (other.name, other.csm_owner, other.nps, other.entitled_devices) == ("c-0002", "ann@example.com", -20, 0)


@pytest.mark.parametrize(
    ("row", "key", "words"),
    [
        ("c 1,Acme,smb,digital,1,2026-01-01,2027-01-01,5,,", "row 3.customer_id", "not a valid identifier"),
        ("c-0001,Acme,smb,digital,1,2026-01-01,2027-01-01,5,,", "row 3.customer_id", "appears twice"),
        ("c-9,Acme,midmarket,digital,1,2026-01-01,2027-01-01,5,,", "row 3.segment", "not allowed"),
        ("c-9,Acme,smb,self_serve,1,2026-01-01,2027-01-01,5,,", "row 3.engagement_model", "not allowed"),
        ("c-9,Acme,smb,digital,12k,2026-01-01,2027-01-01,5,,", "row 3.arr_usd", "not an integer"),
        ("c-9,Acme,smb,digital,1,01/01/2026,2027-01-01,5,,", "row 3.contract_start", "not a date"),
        ("c-9,Acme,smb,digital,1,2026-01-01,2025-01-01,5,,", "row 3.renewal_date", "before contract_start"),
        ("c-9,Acme,smb,digital,1,2026-01-01,2027-01-01,-1,,", "row 3.entitled_devices", "out of range"),
        ("c-9,Acme,smb,digital,1,2026-01-01,2027-01-01,5,,101", "row 3.nps", "out of range"),
    ],
)
def test_errors_name_file_row_and_column(tmp_path, row, key, words):
    path = write(tmp_path, HEADER + GOOD + row + "\n")
    with pytest.raises(ConfigError) as err:
        load_accounts(path)
    assert err.value.key == key and words in err.value.problem
    assert str(err.value).startswith(f"{path}: {key}: ") and "fix: " in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_column_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="header.entitled_devices"):
        load_accounts(write(tmp_path, HEADER.replace(",entitled_devices", "") + "c-1,A,smb,digital,1,2026-01-01,2027-01-01,,\n"))
    with pytest.raises(ConfigError, match="cannot read the accounts registry"):
        load_accounts(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="no accounts"):
        load_accounts(write(tmp_path, HEADER))
