"""Named, constrained sites of a target: splitting z, mapping to the supports and back."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import biject_to, constraints

import flowvi
from flowvi.targets import Site
from flowvi.targets.sites import check_sites, constrain, split, unconstrain

SITES = (
    Site("mu"),
    Site("tau", (), biject_to(constraints.positive)),
    Site("p", (3,), biject_to(constraints.simplex)),
    Site("w", (2, 2)),
)


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_constrain_maps_each_slice_to_its_support_and_back(batch):
    d = sum(s.size for s in SITES)
    assert d == 1 + 1 + 2 + 4  # the simplex of 3 takes 2 coordinates
    z = torch.randn(*batch, d, dtype=torch.float64)
    values = constrain(SITES, z)
    assert values["mu"].shape == batch and values["w"].shape == (*batch, 2, 2)
    torch.testing.assert_close(values["mu"], z[..., 0])
    torch.testing.assert_close(values["tau"], z[..., 1].exp())
    assert (values["p"] > 0).all()
    torch.testing.assert_close(values["p"].sum(-1), torch.ones(batch, dtype=torch.float64))
    torch.testing.assert_close(values["w"], z[..., 4:].reshape(*batch, 2, 2))
    torch.testing.assert_close(unconstrain(SITES, values), z)
    pieces = dict((site.name, piece.shape) for site, piece in split(SITES, z))
    assert pieces["p"] == (*batch, 2) and pieces["tau"] == batch


def test_element_names_and_checks():
    assert SITES[0].element_names() == ["mu"]
    assert SITES[3].element_names() == ["w[0,0]", "w[0,1]", "w[1,0]", "w[1,1]"]
    with pytest.raises(ValueError, match="unique"):
        check_sites([Site("a"), Site("a")], 2)
    with pytest.raises(ValueError, match="take 3 coordinates"):
        check_sites([Site("a", (3,))], 2)
    with pytest.raises(ValueError, match="name"):
        Site("")
    with pytest.raises(ValueError, match="unknown sites"):
        unconstrain(SITES, {"nope": torch.zeros(())})
    with pytest.raises(ValueError, match="no value"):
        unconstrain(SITES, {"mu": torch.zeros(())})
    with pytest.raises(ValueError, match="shape"):
        unconstrain(SITES[:1] + SITES[3:], {"mu": torch.zeros(()), "w": torch.zeros(3)})


def test_targets_name_their_sites_and_a_plain_target_has_one_vector():
    eight = flowvi.targets.get("eight-schools")
    assert [s.name for s in eight.sites] == ["mu", "tau", "theta_t"]
    z = torch.randn(4, 10)
    torch.testing.assert_close(eight.constrain(z)["tau"], z[:, 1].exp())
    plain = flowvi.targets.get("gaussian", dim=3)
    assert [(s.name, s.shape) for s in plain.sites] == [("z", (3,))]
    with pytest.raises(ValueError, match="coordinates"):
        flowvi.targets.Target(3, name="t", sites=[Site("a", (2,))])
