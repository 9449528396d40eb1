"""The engine's pure edges: cache specs from the plan and the command line, and the buildx
command line and bake file they become. No engine is needed to make a command line."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from omibuild.engine.apply import ApplyOptions, _local_cache_dirs, cache_refs
from omibuild.engine.buildx import BuildxExecutor
from omibuild.engine.request import BuildRequest, BuildSecret
from omibuild.planning.plan import BuildOptions, CacheSpec, Plan
from omibuild.store.cache import Cache


@pytest.mark.parametrize(
    ("given", "importing", "exporting"),
    [
        ("/srv/cache", "type=local,src=/srv/cache", "type=local,dest=/srv/cache,mode=max"),
        ("./c", "type=local,src=./c", "type=local,dest=./c,mode=max"),
        (
            "registry.example.com/team/cache:m",
            "type=registry,ref=registry.example.com/team/cache:m",
            "type=registry,ref=registry.example.com/team/cache:m,mode=max",
        ),
        (
            "type=registry,ref=r.io/c,mode=min,compression=zstd",
            "type=registry,ref=r.io/c",
            "type=registry,ref=r.io/c,mode=min,compression=zstd",
        ),
        ("type=local,dest=/d,mode=max", "type=local,src=/d", "type=local,dest=/d,mode=max"),
        ("type=gha,scope=models", "type=gha,scope=models", "type=gha,mode=max,scope=models"),
    ],
)
def test_cache_specs_parse_and_render_as_buildx_reads_them(
    given: str, importing: str, exporting: str
) -> None:
    spec = CacheSpec.parse(given)
    assert (spec.importing(), spec.exporting()) == (importing, exporting)
    assert CacheSpec.parse(spec.exporting()) == spec  # a saved plan reads back the same


def plan_with(*caches: CacheSpec, enabled: bool = True) -> Plan:
    """A plan's build options and nothing else that cache_refs reads."""
    from dataclasses import fields

    blank = {f.name: None for f in fields(Plan)}
    return Plan(**{**blank, "options": BuildOptions(caches=caches, cache_enabled=enabled)})  # type: ignore[arg-type]


def test_local_placeholder_is_this_machines_directory_and_imported_once_it_exists(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path)
    plan = plan_with(CacheSpec("local", "local:iris"))
    imports, [export] = cache_refs(plan, ApplyOptions(), cache)
    where = tmp_path / "buildkit" / "iris"
    assert imports == ()  # nothing exported there yet
    assert export.exporting() == (
        f"type=local,dest={where},mode=max,compression=uncompressed,ignore-error=true"
    )
    where.mkdir(parents=True)
    (where / "index.json").write_text("{}")
    [imported], _ = cache_refs(plan, ApplyOptions(), cache)
    assert imported.importing() == f"type=local,src={where}"


def test_cache_to_on_the_command_line_replaces_the_plans_and_keeps_its_own_settings(
    tmp_path: Path,
) -> None:
    plan = plan_with(CacheSpec("local", "local:iris"))
    options = ApplyOptions(cache_to="type=registry,ref=r.io/c,compression=zstd")
    [imported], [exported] = cache_refs(plan, options, Cache(tmp_path))
    assert imported.importing() == "type=registry,ref=r.io/c"
    assert exported.exporting() == (
        "type=registry,ref=r.io/c,mode=max,compression=zstd,ignore-error=true"
    )


def test_no_cache_and_a_disabled_cache_use_none(tmp_path: Path) -> None:
    plan = plan_with(CacheSpec("registry", "r.io/c"))
    assert cache_refs(plan, ApplyOptions(no_cache=True), Cache(tmp_path)) == ((), ())
    off = plan_with(CacheSpec("registry", "r.io/c"), enabled=False)
    assert cache_refs(off, ApplyOptions(), Cache(tmp_path)) == ((), ())


def request(tmp_path: Path, **fields: object) -> BuildRequest:
    base: dict[str, object] = {
        "context": tmp_path / "ctx",
        "dockerfile": tmp_path / "ctx" / "Dockerfile",
        "tags": ("r.io/m:1", "r.io/m:latest"),
    }
    return BuildRequest(**{**base, **fields})  # type: ignore[arg-type]


def test_buildx_command_line(tmp_path: Path) -> None:
    req = request(
        tmp_path,
        output="push",
        compression="gzip",
        platforms=("linux/amd64", "linux/arm64"),
        cache_from=(CacheSpec("local", "/c"),),
        cache_to=(CacheSpec("local", "/c", (("ignore-error", "true"),)),),
        secrets=(BuildSecret("ca", file=tmp_path / "ca.pem"), BuildSecret("tok", value="s3cr3t")),
        annotations=(("io.omibuild.plan.digest", "sha256:ab"),),
        source_date_epoch=1700000000,
    )
    cmd = BuildxExecutor().command(req, tmp_path / "meta.json")
    assert cmd[cmd.index("build") + 1] == str(tmp_path / "ctx")
    pairs = list(itertools.pairwise(cmd))
    assert ("--platform", "linux/amd64,linux/arm64") in pairs
    assert ("--cache-from", "type=local,src=/c") in pairs
    assert ("--cache-to", "type=local,dest=/c,mode=max,ignore-error=true") in pairs
    assert ("--secret", f"id=ca,src={tmp_path / 'ca.pem'}") in pairs
    tok = next(b for a, b in pairs if a == "--secret" and b.startswith("id=tok"))
    assert "s3cr3t" not in " ".join(cmd) and tok.startswith("id=tok,env=OMIBUILD_SECRET_")
    assert ("--annotation", "manifest:io.omibuild.plan.digest=sha256:ab") in pairs
    assert ("--annotation", "index:io.omibuild.plan.digest=sha256:ab") in pairs
    assert ("--build-arg", "SOURCE_DATE_EPOCH=1700000000") in pairs
    output = cmd[cmd.index("--output") + 1]
    assert output == (
        'type=image,"name=r.io/m:1,r.io/m:latest",push=true,compression=gzip,force-compression=true'
    )
    no_cache = BuildxExecutor().command(
        request(tmp_path, no_cache=True, cache_to=(CacheSpec("local", "/c"),)), tmp_path / "m"
    )
    assert "--no-cache" in no_cache and "--cache-to" not in no_cache


def test_bake_file_holds_each_build_as_a_target(tmp_path: Path) -> None:
    reqs = [
        request(tmp_path, cache_to=(CacheSpec("registry", "r.io/c"),)),
        request(tmp_path, output="oci:/tmp/out.tar", no_cache=True),
    ]
    bake = BuildxExecutor().bake_file(reqs)
    assert bake["group"]["default"]["targets"] == ["model0", "model1"]
    first, second = bake["target"]["model0"], bake["target"]["model1"]
    assert first["cache-to"] == ["type=registry,ref=r.io/c,mode=max"]
    assert first["output"] == [
        'type=image,"name=r.io/m:1,r.io/m:latest",push=false,compression=uncompressed'
    ]
    assert second["no-cache"] is True and "cache-to" not in second
    assert second["output"] == ["type=oci,dest=/tmp/out.tar"]


def test_local_cache_directories_are_what_a_build_reads_or_writes(tmp_path: Path) -> None:
    req = request(
        tmp_path,
        cache_from=(CacheSpec("local", str(tmp_path / "a")), CacheSpec("registry", "r.io/c")),
        cache_to=(CacheSpec("local", str(tmp_path / "b")),),
    )
    assert _local_cache_dirs(req) == {tmp_path / "a", tmp_path / "b"}


def test_the_pip_configuration_a_build_gets_leaves_out_the_host_s_file_indexes(
    tmp_path: Path,
) -> None:
    from omibuild.engine.secrets import portable_pip_config

    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nfind-links = /opt/wheels\ntimeout = 60\n"
        "extra-index-url = file:///opt/pypi/simple https://pypi.example/simple\n"
        "index-url = file:///opt/only\n"
    )
    text = portable_pip_config({"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path)})
    assert text == ("[global]\ntimeout = 60\nextra-index-url = https://pypi.example/simple\n")


def test_a_failed_dry_prediction_names_the_daemon_s_reason_not_the_cli_s_hint() -> None:
    from omibuild.engine.assemble import reason_line

    said = (
        "docker: Error response from daemon: No such image: omibuild.local/m:omibuild-tmp-1.",
        "Run 'docker run --help' for more information",
    )
    assert reason_line(said) == said[0]
    assert reason_line(("omibuild: the example input failed: ValueError: x",)) == (
        "omibuild: the example input failed: ValueError: x"
    )
    assert reason_line(()) is None
