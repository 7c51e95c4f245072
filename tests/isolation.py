"""Code for subprocesses that must run WITHOUT this package: the remote-code (trust_remote_code) loading tests.

`python -I` keeps the checkout off sys.path, but a `pip install -e .` puts the package back through a
meta-path finder; this snippet blocks it, so the load can only use the files saved beside the weights.
"""

BLOCK_PACKAGE = '''
import sys
class _BlockPackage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("train", "modeling_graphgpt2", "data_builders", "benchmarks"):
            raise ImportError(name + " is blocked: a remote-code load must not need the package")
sys.meta_path.insert(0, _BlockPackage())
'''
