import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_addoption(parser):
    parser.addoption("--build", default=os.environ.get("ZLPR_BUILD", os.path.join(ROOT, "build")),
                     help="the CMake build directory with zlpr-server and zlpr-cli")
