"""Ray's environment defaults, declared once (`twostep.ray_env`): a value the user set wins."""

from twostep.ray_env import OWN_CLUSTER_ENV, OWN_SERVE_ENV, RAY_ENV_DEFAULTS, apply_ray_env


def test_defaults_fill_in_and_never_override():
    env = apply_ray_env({"RAY_AUTH_MODE": "token"}, OWN_SERVE_ENV)
    assert env["RAY_AUTH_MODE"] == "token"  # the user's
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"
    plain = apply_ray_env({})
    assert plain == RAY_ENV_DEFAULTS and not set(OWN_SERVE_ENV) & set(plain)
    assert set(apply_ray_env({}, OWN_CLUSTER_ENV, OWN_SERVE_ENV)) == {
        *RAY_ENV_DEFAULTS, *OWN_CLUSTER_ENV, *OWN_SERVE_ENV}
