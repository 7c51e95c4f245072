"""The faked Hub over HTTP answers as the Hub does for what the clients ask (files, ranges, trees, paths-info,
the error codes that become RepositoryNotFound / RevisionNotFound / EntryNotFound), and only localhost is reached."""
import socket

import httpx2
import pytest

from fake_hub_server import FakeHubServer, served_hub  # noqa: F401  (fixture)


@pytest.fixture
def repo(served_hub, tmp_path):  # noqa: F811
    from huggingface_hub import HfApi

    folder = tmp_path / "upload"
    (folder / "sub" / "deep").mkdir(parents=True)
    (folder / "README.md").write_text("# hello\n")
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)) * 4)
    (folder / "sub" / "deep" / "x.txt").write_text("x")
    api = HfApi()
    api.create_repo("org/files", repo_type="dataset")
    sha = api.upload_folder(folder_path=str(folder), repo_id="org/files", repo_type="dataset").oid
    return served_hub, folder, sha


def test_downloads_trees_and_paths_info(repo):
    from huggingface_hub import HfApi, HfFileSystem, hf_hub_download

    server, folder, sha = repo
    path = hf_hub_download("org/files", "sub/data.bin", repo_type="dataset")
    assert open(path, "rb").read() == (folder / "sub" / "data.bin").read_bytes()
    assert f"/snapshots/{sha}/" in path and str(server.home) in path  # the commit, in the fresh cache
    api = HfApi()
    assert api.dataset_info("org/files").sha == sha
    assert sorted(s.rfilename for s in api.dataset_info("org/files", revision=sha).siblings) == \
        ["README.md", "sub/data.bin", "sub/deep/x.txt"]
    assert sorted(e.path for e in api.list_repo_tree("org/files", repo_type="dataset")) == ["README.md", "sub"]
    assert sorted(e.path for e in api.list_repo_tree("org/files", "sub", repo_type="dataset", recursive=True)) == \
        ["sub/data.bin", "sub/deep", "sub/deep/x.txt"]
    info = api.get_paths_info("org/files", ["sub/data.bin", "sub/deep", "missing"], repo_type="dataset")
    assert [(type(e).__name__, e.path) for e in info] == [("RepoFile", "sub/data.bin"), ("RepoFolder", "sub/deep")]
    assert info[0].size == 1024
    with HfFileSystem().open(f"datasets/org/files@{sha}/sub/data.bin", "rb", block_size=16) as f:  # Range reads
        f.seek(300)
        assert f.read(5) == bytes(range(44, 49))


def test_errors_are_the_hubs(repo):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    server, _, _ = repo
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nothing", "README.md", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/files", "README.md")  # a model repo of that name does not exist
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/files", "README.md", repo_type="dataset", revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/files", "nope.txt", repo_type="dataset")
    assert ("HEAD", "/datasets/org/nothing/resolve/main/README.md", 401) in server.requests


def test_only_localhost_and_shutdown(tmp_path, served_hub):  # noqa: F811
    with pytest.raises(OSError, match="network blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    with FakeHubServer(tmp_path / "empty") as server:
        assert httpx2.get(server.url + "/api/unknown").status_code == 404
    with pytest.raises(httpx2.ConnectError):  # the thread is gone and the port closed
        httpx2.get(server.url + "/api/unknown")
