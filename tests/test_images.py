"""The images in images/ install exactly what pyproject.toml pins (images/README.md), so an image runs the
versions the tests ran.

Fast tests read the Dockerfiles: every `name==version` they name equals pyproject's pin, every extra
they install exists, they run as a non-root user and carry no secret-looking ENV/ARG, and
`python -m sidreasoner.components.images` / `make images` build each of them under the name the
compiled pipeline uses (test_compile.py checks that every compiled image has a Dockerfile).

Slow tests replay a Dockerfile's install commands in a fresh `python -m venv` (no Docker engine here).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sidreasoner.components.images import CPU_IMAGE, DOCKERFILES, TRAIN_IMAGE, build_commands
from sidreasoner.provenance import code_version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
ALL_DOCKERFILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "images").rglob("Dockerfile"))
CPU_DOCKERFILE, TRAIN_DOCKERFILE = DOCKERFILES[CPU_IMAGE], DOCKERFILES[TRAIN_IMAGE]
# The one translation the clean-venv test makes: the CPU wheel index is unreachable here, and the
# default index on these machines serves the local-disk CPU wheel for torch==2.13.0.
CPU_TORCH_INDEX = ("--index-url", "https://download.pytorch.org/whl/cpu")


# --- reading a Dockerfile -------------------------------------------------------------------------


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped, and `${NAME}`
    replaced by the default of the build argument NAME (what a plain `docker build` uses)."""
    out, pending, defaults = [], "", {}
    for line in (ROOT / dockerfile).read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, args = pending.strip().partition(" ")
        if keyword.upper() == "ARG" and "=" in args:
            name, _, default = args.strip().partition("=")
            defaults[name] = " ".join(shlex.split(default))
        elif keyword.upper() != "ARG":
            args = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), args)
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, f"{dockerfile} ends inside a continued line"
    return out


def pip_installs(run: str) -> list[list[str]]:
    """The argument lists of every `pip install` in one RUN command."""
    tokens = shlex.split(run.replace(";", " ; "))
    starts = [i for i in range(len(tokens) - 1) if tokens[i] == "pip" and tokens[i + 1] == "install"]
    stops = {"&&", "||", ";", "|", ">", "fi", "then"}
    found = []
    for i in starts:
        args = []
        for token in tokens[i + 2 :]:
            if token in stops:
                break
            args.append(token)
        found.append(args)
    return found


def requirement_args(args: list[str]) -> list[str]:
    """The positional arguments of a `pip install` (requirements and paths), options dropped."""
    takes_value = {
        "--index-url",
        "-i",
        "--extra-index-url",
        "-r",
        "--requirement",
        "-c",
        "--constraint",
        "-f",
        "--find-links",
        "--report",
        "-t",
        "--target",
    }
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def pyproject_pins() -> dict[str, str]:
    """Every exact pin in pyproject.toml (dependencies and every extra): canonical name -> version."""
    pins = {}
    for line in PYPROJECT["dependencies"] + sum(PYPROJECT["optional-dependencies"].values(), []):
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def project_extras(run: str) -> list[list[str]]:
    """Extras of this project a RUN installs: `pip install '.[a,b]'` and pyproject reads `['x']`."""
    found = [
        re.fullmatch(r"\.\[([\w,-]+)\]", a).group(1).split(",")
        for args in pip_installs(run)
        for a in requirement_args(args)
        if a.startswith(".[")
    ]
    read = re.findall(r"\['optional-dependencies'\]\['([\w-]+)'\]", run)
    return found + ([read] if read else [])


# --- fast checks ----------------------------------------------------------------------------------


def test_every_dockerfile_is_built_under_a_compiled_image_name():
    """images/ holds exactly the Dockerfiles components/images.py names (no orphan, none missing)."""
    assert ALL_DOCKERFILES == sorted(DOCKERFILES.values())
    assert len(set(DOCKERFILES.values())) == len(DOCKERFILES)  # one Dockerfile per image


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_every_pin_in_the_dockerfile_equals_pyprojects(dockerfile):
    pins = pyproject_pins()
    assert pins["torch"] == "2.13.0"  # any looser torch pulls a multi-GB CUDA build
    named = 0
    for keyword, args in instructions(dockerfile):
        for name, version in re.findall(r"(?<![\w.\-\[])([A-Za-z][\w.\-]*(?:\[[\w,\-]+\])?)==([\w.+!\-]+)", args):
            named += 1
            key = canonicalize_name(name.split("[")[0])
            assert key in pins, f"{dockerfile}: {keyword} pins {name}=={version}, which pyproject.toml does not pin"
            assert version == pins[key], f"{dockerfile}: {name}=={version}, pyproject.toml pins {pins[key]}"
        if keyword == "RUN":
            for pip_args in pip_installs(args):
                for req in requirement_args(pip_args):
                    # The project itself, or a package pinned exactly (checked above): nothing unpinned.
                    assert req == "." or req.startswith(".[") or "==" in req, f"{dockerfile}: unpinned {req!r}"
    assert named >= 1  # at least torch, installed alone before everything else


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_the_dockerfile_installs_the_project_and_only_extras_pyproject_has(dockerfile):
    runs = [args for keyword, args in instructions(dockerfile) if keyword == "RUN"]
    installs = [req for run in runs for pip_args in pip_installs(run) for req in requirement_args(pip_args)]
    assert [r for r in installs if r == "." or r.startswith(".[")], f"{dockerfile} never installs the project"
    for run in runs:
        for extras in project_extras(run):
            missing = set(extras) - set(PYPROJECT["optional-dependencies"])
            assert not missing, f"{dockerfile} installs extras {missing} that pyproject.toml lacks"


def test_training_image_installs_rl_and_gpu_the_same_way_in_every_step():
    """Step 2 (dependencies, before the code) and step 4 (the project) install the same extras."""
    runs = [args for keyword, args in instructions(TRAIN_DOCKERFILE) if keyword == "RUN"]
    extras = [sorted(e) for run in runs for e in project_extras(run)]
    assert extras.count(["gpu", "rl"]) == 2, extras
    assert ["flash-attn"] in extras
    # torch comes first and alone (its own layer), then the dependencies, then the project.
    assert pip_installs([r for r in runs if pip_installs(r)][0]) == [["torch==" + pyproject_pins()["torch"]]]
    # The gpu extra is vLLM alone, pinned: vLLM pins torch exactly, so its version decides which torch fits.
    assert [canonicalize_name(Requirement(r).name) for r in PYPROJECT["optional-dependencies"]["gpu"]] == ["vllm"]
    assert "vllm" in pyproject_pins() and "flash-attn" in pyproject_pins()


def test_flash_attn_is_a_build_arg_off_by_default():
    args = dict(a.partition("=")[::2] for k, a in instructions(TRAIN_DOCKERFILE) if k == "ARG")
    assert args == {"BASE_IMAGE": "python:3.11-slim", "INSTALL_FLASH_ATTN": "0"}
    flash = [a for k, a in instructions(TRAIN_DOCKERFILE) if k == "RUN" and "flash-attn" in a]
    assert len(flash) == 1 and flash[0].startswith('if [ "$INSTALL_FLASH_ATTN" = 1 ]; then')
    assert "--no-build-isolation" in flash[0]


def test_cpu_image_carries_no_gpu_extra():
    runs = [args for keyword, args in instructions(CPU_DOCKERFILE) if keyword == "RUN"]
    assert not [e for run in runs for e in project_extras(run)]
    assert "vllm" not in (ROOT / CPU_DOCKERFILE).read_text().lower()


def test_training_image_has_a_c_compiler_for_triton():
    """Triton compiles a C launcher for each kernel at run time (torch.compile, vLLM, verl); the slim base
    image has no compiler, so gcc and the C library headers are installed, before torch."""
    steps = instructions(TRAIN_DOCKERFILE)
    apt = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "apt-get install" in a]
    assert len(apt) == 1, "one apt-get layer"
    run = steps[apt[0]][1]
    packages = set(run.split("apt-get install", 1)[1].split("&&")[0].split()) - {"-y", "--no-install-recommends"}
    assert {"gcc", "libc6-dev"} <= packages or "build-essential" in packages
    assert "rm -rf /var/lib/apt/lists/*" in run
    first_pip = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and pip_installs(a))
    assert apt[0] < first_pip
    user = next(i for i, (k, _) in enumerate(steps) if k == "USER")
    assert apt[0] < user  # installed as root
    assert (
        "Triton" in (ROOT / "images" / "README.md").read_text() and "gcc" in (ROOT / "images" / "README.md").read_text()
    )


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_dependencies_are_installed_before_the_source_is_copied(dockerfile):
    """Layer order: pyproject.toml alone, its dependencies installed, then the source and the project;
    a code change then rebuilds only the last layers."""
    steps = instructions(dockerfile)
    copies = [(i, a.split()[:-1]) for i, (k, a) in enumerate(steps) if k == "COPY"]
    assert copies[0][1] == ["pyproject.toml"], "pyproject.toml is copied first, alone"
    source = min(i for i, srcs in copies if {"src", "components", "pipelines"} & set(srcs))
    deps = [
        i
        for i, (k, a) in enumerate(steps)
        if k == "RUN" and "pip install -r /tmp/requirements.txt" in a and "['dependencies']" in a
    ]
    project = [
        i
        for i, (k, a) in enumerate(steps)
        if k == "RUN"
        and [r for args in pip_installs(a) for r in requirement_args(args) if r == "." or r.startswith(".[")]
    ]
    assert deps and copies[0][0] < deps[0] < source < project[0]


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_the_image_runs_as_a_non_root_user(dockerfile):
    steps = instructions(dockerfile)
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in ("0", "root") and not users[-1].startswith(("0:", "root:"))
    assert re.search(rf"useradd .*--uid {re.escape(users[-1])}\b", (ROOT / dockerfile).read_text())


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES)
def test_no_env_or_arg_looks_like_a_secret(dockerfile):
    for keyword, args in instructions(dockerfile):
        if keyword in ("ENV", "ARG"):
            words = shlex.split(args)
            names = [w.split("=", 1)[0] for w in words if "=" in w] or words[:1]  # `ENV A=1 B=2` or `ENV A 1`
            for name in names:
                assert not re.search(r"KEY|TOKEN|PASSWORD|PASSWD|SECRET|CREDENTIAL", name.upper()), (
                    f"{dockerfile}: {keyword} {name}: secrets come from Kubernetes Secrets at run time"
                )


def test_images_module_builds_every_dockerfile_under_the_compiled_names():
    printed = subprocess.run(
        [sys.executable, "-m", "sidreasoner.components.images"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert printed == build_commands()
    for line, (image, dockerfile) in zip(printed, DOCKERFILES.items(), strict=True):
        assert line.startswith(
            f"docker build -f {dockerfile} --label io.sidreasoner.code-version={code_version()} -t {image} "
        ) and line.endswith(" .")
    assert sorted(line.split()[3] for line in printed) == ALL_DOCKERFILES


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("target,flag", [("images", ""), ("push-images", " --push")])
def test_make_images_pipes_the_images_module_to_the_shell(target, flag, tmp_path):
    # -n prints the recipe without running it (there is no Docker engine here); the venv is
    # pointed at a scratch folder so make does not consider rebuilding the project's own.
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'v'}"], capture_output=True, text=True, check=True
    ).stdout
    assert f"-m sidreasoner.components.images{flag} | sh -ex" in out


# --- clean-venv installs (slow) --------------------------------------------------------------------


def _fresh_venv(path: Path) -> tuple[Path, dict]:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(VIRTUAL_ENV=str(path), PATH=f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    # Only speed: pip skips byte-compiling what it installs (about a third of the time on 2 cores).
    env["PIP_NO_COMPILE"] = "1"
    return path / "bin" / "python", env


def _copy(dockerfile: str, args: str, workdir: Path):
    """COPY <src>... <dest>, sources relative to the build context (the repository root)."""
    *sources, dest = args.split()
    target = workdir / dest
    for source in sources:
        src = ROOT / source
        into = target / src.name if (dest.endswith("/") or len(sources) > 1) else target
        if src.is_dir():
            # Docker would copy __pycache__ too; they are skipped here only because tests running beside
            # this one may write them mid-copy. pip ignores them either way.
            shutil.copytree(src, into, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into)


def _translate_cpu_index(run: str) -> str:
    """Drop `--index-url https://download.pytorch.org/whl/cpu` (unreachable here): `pip install torch==…`
    then takes torch from the default index, which on these machines is the local CPU wheel."""
    return run.replace(" ".join(CPU_TORCH_INDEX), "").strip()


@pytest.mark.slow
@pytest.mark.skipif(
    bool(os.environ.get("CI")),
    reason="under CI `make test` runs `make image-test` next, which builds images/cpu/Dockerfile itself and "
    "checks the installed package in the image (tests/test_image_dag.py)",
)
def test_cpu_image_installs_in_a_clean_venv(tmp_path):
    """Replays images/cpu/Dockerfile in a fresh venv: its COPY lines into a scratch WORKDIR, its RUN
    lines that install (`pip install …` and the checks chained to them), verbatim but for the torch
    index (see _translate_cpu_index). The useradd/USER lines are for the image and are not replayed;
    neither are ENV lines (PIP_NO_CACHE_DIR would only make this test slower)."""
    started = time.monotonic()
    python, env = _fresh_venv(tmp_path / "venv")
    workdir = tmp_path / "context"
    workdir.mkdir()
    replayed, copied, timings = [], [], []
    for keyword, args in instructions(CPU_DOCKERFILE):
        if keyword == "FROM":
            assert args.startswith("python:3.11"), "the venv's Python should match the image's"
        elif keyword == "COPY":
            _copy(CPU_DOCKERFILE, args, workdir)
            copied += args.split()[:-1]
        elif keyword == "RUN" and pip_installs(args):
            command = _translate_cpu_index(args)
            step = time.monotonic()
            subprocess.run(["/bin/sh", "-c", command], cwd=workdir, env=env, check=True)
            replayed.append(command)
            timings.append(f"{command}: {time.monotonic() - step:.0f} s")
    assert replayed[0] == "pip install torch==2.13.0" and len(replayed) == 3
    assert "pip install -r /tmp/requirements.txt" in replayed[1]  # dependencies, before the code
    assert replayed[2] == "pip install . && sidreasoner --help > /dev/null"
    assert sorted(copied) == ["README.md", "components", "pipelines", "pyproject.toml", "src"]

    # Import from elsewhere than the context folder (whose components/ and pipelines/ would shadow).
    check = (
        "import importlib.util, json, sys, sysconfig, sidreasoner.components, sidreasoner.pipelines\n"
        "import sidreasoner.components.images, sidreasoner.pipelines.compile\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "print(json.dumps({'site': site, 'components': sidreasoner.components.__file__,\n"
        "  'generic': {g: bool(importlib.util.find_spec(g)) for g in ('components', 'pipelines')},\n"
        "  'torch': __import__('torch').__version__}))\n"
    )
    result = json.loads(
        subprocess.run(
            [str(python), "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert result["components"].startswith(result["site"])  # installed, not read from the copy
    assert result["generic"] == {"components": False, "pipelines": False}  # only sidreasoner is a top-level name
    site = Path(result["site"])
    assert not (site / "components").exists() and not (site / "pipelines").exists()
    assert result["torch"].startswith("2.13.0")
    print(f"clean-venv install of {CPU_DOCKERFILE}: {time.monotonic() - started:.0f} s ({'; '.join(timings)})")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SIDREASONER_TEST_TRAIN_RESOLVE") != "1",
    reason="set SIDREASONER_TEST_TRAIN_RESOLVE=1: pip's resolver downloads ~1.8 GB of wheels to "
    "read their metadata (this index serves no PEP 658 metadata files), about 3.5 min here",
)
def test_training_image_requirements_resolve(tmp_path):
    """pip's resolver accepts the training image's commands: torch==2.13.0 installed first (the CPU
    wheel here, the CUDA one in the image), then `pip install '.[rl,gpu]'` as a dry run. Only the
    torch wheel's own CUDA dependencies (nvidia-*, triton) are not part of the resolution here."""
    python, env = _fresh_venv(tmp_path / "venv")
    workdir = tmp_path / "context"
    workdir.mkdir()
    runs = []
    for keyword, args in instructions(TRAIN_DOCKERFILE):
        if keyword == "COPY":
            _copy(TRAIN_DOCKERFILE, args, workdir)
        elif keyword == "RUN" and pip_installs(args):
            runs.append(args)
    assert runs[0] == "pip install torch==2.13.0"
    subprocess.run(["/bin/sh", "-c", runs[0]], cwd=workdir, env=env, check=True)
    project = [a for run in runs for a in pip_installs(run) if ".[rl,gpu]" in a]
    assert project == [[".[rl,gpu]"]]
    report = tmp_path / "report.json"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), ".[rl,gpu]"],
        cwd=workdir,
        env=env,
        check=True,
    )
    chosen = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    pins = pyproject_pins()
    assert "torch" not in chosen  # the torch==2.13.0 already installed satisfies vLLM's and verl's needs
    for name in ("vllm", "verl", "transformers", "peft", "trl", "accelerate"):
        assert chosen[name] == pins[name], name
