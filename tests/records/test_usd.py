"""Money as fleetd writes it: a spend beside its cap is never rounded into looking like the cap."""

from __future__ import annotations

from fleetd.records.money import usd, usd_apart


def test_an_amount_under_a_cent_keeps_two_significant_digits() -> None:
    assert (usd(0), usd(2.5), usd(0.0018), usd(1234.5)) == ("$0.00", "$2.50", "$0.0018", "$1,234.50")


def test_a_spend_beside_its_cap_shows_the_digits_that_tell_them_apart() -> None:
    # "$0.03 of $0.03 spent …, and one costs about $0.0025": $0.0276 was spent, under the cap.
    assert usd_apart(0.0276, 0.03) == ("$0.028", "$0.03")
    assert usd_apart(9.996, 10.0) == ("$9.996", "$10.00")
    assert usd_apart(0.0304, 0.03) == ("$0.0304", "$0.03")  # over it by less than a cent
    # Both at the digits that tell them apart, else each rounded its own way read in the wrong order.
    assert usd_apart(0.0251, 0.025) == ("$0.0251", "$0.025")  # over ("$0.0251 of $0.03" read as under)
    assert usd_apart(0.0149, 0.015) == ("$0.0149", "$0.015")  # under ("$0.0149 of $0.01" read as over)
    assert usd_apart(10.00001, 10.00049) == ("$10.00", "$10.0005")  # no bare "$10."
    assert usd_apart(1.5, 3.0) == ("$1.50", "$3.00")  # apart already
    assert usd_apart(0.03, 0.03) == ("$0.03", "$0.03")  # at it
    assert usd_apart(0.007533000000000001, 0.007533) == ("$0.0075", "$0.0075")  # float noise is not a difference
