import pytest

from bioft_tutorial.profile import PROFILES, get_profile


def test_default_is_smoke(monkeypatch):
    monkeypatch.delenv("BIOFT_PROFILE", raising=False)
    assert get_profile().name == "smoke"


@pytest.mark.parametrize("name", PROFILES)
def test_env_selects_profile(monkeypatch, name):
    monkeypatch.setenv("BIOFT_PROFILE", name.upper())
    p = get_profile()
    assert p.name == name
    assert (p.device == "cpu") == (name == "smoke")
    assert (p.esm_model == "tiny") == (name == "smoke")


def test_full_uses_real_checkpoints():
    p = get_profile("full")
    assert p.esm_model == "facebook/esm2_t33_650M_UR50D"
    assert p.evo2_model.startswith("evo2_")


def test_unknown_profile_message(monkeypatch):
    monkeypatch.setenv("BIOFT_PROFILE", "fast")
    with pytest.raises(ValueError, match=r"unknown profile 'fast'.*smoke"):
        get_profile()


def test_overrides_and_unknown_field():
    assert get_profile("smoke", max_steps=7).max_steps == 7
    with pytest.raises(ValueError, match="max_stepz"):
        get_profile("smoke", max_stepz=7)


def test_banner_names_profile():
    html = get_profile("smoke").show()._repr_html_()
    assert "Profile: smoke" in html and "not results" in html
    assert "FULL" in get_profile("full").banner()
