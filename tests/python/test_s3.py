"""s3:// checkpoints against moto's S3 server on 127.0.0.1 with signature checking on: from Python
and through the command; a wrong secret is refused without being shown. Skipped where moto or the
module's libcurl is missing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import instanttensor as it
from conftest import write_sharded_reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "remote"))
from servers import free_port, wait_for_port  # noqa: E402

COMMAND = Path(__file__).resolve().parents[2] / "build" / "bin" / "instanttensor"
SECRET = "moto-secret-Zq81"  # replaced by the key moto issues; never expected in a message


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto serving a bucket holding a sharded checkpoint under model/, requests checked against an
    IAM user's key (moto authenticates every request after the first INITIAL_NO_AUTH_ACTION_COUNT).
    Yields (environment for the loader, the tensors written)."""
    boto3 = pytest.importorskip("boto3")
    moto_server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if moto_server is None:
        pytest.skip("moto[server] is not installed")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    server = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not wait_for_port(port, server, seconds=30):
            pytest.skip(f"moto_server did not start: {server.stderr.read().decode()[-500:]}")
        setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="loader")  # the 3 actions before authentication starts
        key = iam.create_access_key(UserName="loader")["AccessKey"]
        iam.put_user_policy(UserName="loader", PolicyName="all",
                            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
        signed = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                      aws_secret_access_key=key["SecretAccessKey"])
        client = boto3.client("s3", **signed)
        client.create_bucket(Bucket="weights")
        root = tmp_path_factory.mktemp("s3")
        tensors = write_sharded_reference(root)
        for f in root.iterdir():
            client.upload_file(str(f), "weights", "model/" + f.name)
            if f.name.endswith(".safetensors"):  # shards without their index: loaded in name order
                client.upload_file(str(f), "weights", "shards/" + f.name)
            else:  # two indexes: which one is meant cannot be told
                for name in ("a.safetensors.index.json", "b.safetensors.index.json"):
                    client.upload_file(str(f), "weights", "two-indexes/" + name)
        # A prefix holding no checkpoint, beside one (sub/) that does not count. (The pages of a
        # listing are chained by tests/detail/remote_test.cpp: 1000 keys are slow to put here.)
        client.put_object(Bucket="weights", Key="none/readme.md", Body=b"no weights here")
        client.upload_file(str(root / "model-00001-of-00002.safetensors"), "weights", "none/sub/m.safetensors")
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1"}, tensors
    finally:
        server.terminate()
        server.wait(10)


def use(monkeypatch, env):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def load_or_skip(path):
    try:
        return it.load_file(path)
    except it.UnavailableError as e:
        pytest.skip(f"built without libcurl: {e}")


def test_a_signed_prefix_loads_bit_exactly(s3, monkeypatch):
    env, tensors = s3
    use(monkeypatch, env)
    loaded = load_or_skip("s3://weights/model/")  # a prefix: its index
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name


def test_a_prefix_is_listed_as_a_directory(s3, monkeypatch):
    """Its one index, else its safetensors files in name order, over every page of the listing."""
    env, tensors = s3
    use(monkeypatch, env)
    shards = load_or_skip("s3://weights/shards/")
    assert sorted(shards) == sorted(tensors) and all(torch.equal(shards[n], t) for n, t in tensors.items())
    with pytest.raises(it.FormatError, match="s3://weights/two-indexes/: prefix holds several"):
        it.load_file("s3://weights/two-indexes/")
    with pytest.raises(it.FormatError, match="s3://weights/none/: prefix holds no"):
        it.load_file("s3://weights/none/")
    with pytest.raises(it.FormatError, match="s3://weights/absent/: prefix holds no"):
        it.load_file("s3://weights/absent/")
    with pytest.raises(OSError, match="s3://nobucket/: cannot list the prefix: HTTP 404"):
        it.load_file("s3://nobucket/")


def test_credentials_from_a_profile(s3, monkeypatch, tmp_path):
    env, tensors = s3
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
                           f"[loader]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
                           f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n")
    use(monkeypatch, {"AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"], "AWS_REGION": "us-east-1"})
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "loader")
    loaded = load_or_skip("s3://weights/model/model.safetensors.index.json")
    assert torch.equal(loaded["layer5.weight"], tensors["layer5.weight"])


def test_a_wrong_secret_is_refused_without_showing_it(s3, monkeypatch):
    env, _ = s3
    use(monkeypatch, dict(env, AWS_SECRET_ACCESS_KEY=SECRET))
    with pytest.raises(OSError, match=r"s3://weights/model/: cannot list the prefix: HTTP 403.*check the AWS credentials") as e:
        load_or_skip("s3://weights/model/")
    assert SECRET not in str(e.value) and env["AWS_SECRET_ACCESS_KEY"] not in str(e.value)


def test_the_command_hashes_s3_as_the_local_files(s3, tmp_path):
    if not COMMAND.exists():
        pytest.skip(f"{COMMAND} is not built")
    env, tensors = s3
    local = tmp_path / "local"
    local.mkdir()
    write_sharded_reference(local)
    run_env = dict(os.environ, **env, AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    remote = subprocess.run([COMMAND, "hash", "s3://weights/model/"], capture_output=True, text=True, env=run_env)
    expected = subprocess.run([COMMAND, "hash", str(local)], capture_output=True, text=True)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == expected.stdout and len(remote.stdout.splitlines()) == len(tensors)


def test_an_unsigned_request_is_refused_with_a_hint(s3, monkeypatch):
    env, _ = s3
    use(monkeypatch, {"AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"], "AWS_REGION": "us-east-1"})
    with pytest.raises(OSError, match="HTTP 403.*not signed: set AWS_ACCESS_KEY_ID"):
        load_or_skip("s3://weights/model/model.safetensors.index.json")
