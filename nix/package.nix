# MusicFS as a Nix package: the Python application from pyproject.toml, its runtime
# libraries from nixpkgs, and fusermount3 reachable for unmounting stale mounts.
{
  lib,
  python3Packages,
  fuse3,
}:

let
  pyproject = lib.importTOML ../pyproject.toml;

  # Only what the build and the layer-1 tests read: editing the Nix files, the README's
  # other sections or bench/ must not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../musicfs
      ../tests
    ];
  };

  # The same list as [project.dependencies]; pythonRuntimeDepsCheckHook holds the two
  # together (it fails the build when a version bound in pyproject.toml is not met).
  pythonDependencies =
    ps: with ps; [
      pyfuse3
      trio
      apsw
      lmdb
      mutagen
      tantivy
      minio
      asyncssh
    ];
in
python3Packages.buildPythonApplication {
  pname = "musicfs";
  inherit (pyproject.project) version;
  pyproject = true;
  inherit src;

  build-system = [ python3Packages.setuptools ];

  dependencies = pythonDependencies python3Packages;

  # --suffix, not --prefix: on NixOS the setuid wrapper /run/wrappers/bin/fusermount3 must
  # win over the plain store binary (a non-root daemon can only mount and unmount through
  # it). The store copy is the fallback for root and for non-NixOS hosts.
  # MUSICFS_FIXTURES lets `musicfs demo` find its audio fixtures outside a source checkout.
  makeWrapperArgs = [
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [ fuse3 ])
    "--set-default"
    "MUSICFS_FIXTURES"
    "${placeholder "out"}/share/musicfs/fixtures"
  ];

  postInstall = ''
    install -Dm644 -t $out/share/musicfs/fixtures tests/fixtures/*
  '';

  # Layer 1 only: layer 2 needs /dev/fuse and layer 3 real servers in network namespaces,
  # neither of which exists in the build sandbox (the NixOS VM tests in flake.nix cover
  # those scenarios instead).
  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    pytest-timeout
    hypothesis
  ];
  disabledTestPaths = [
    "tests/process"
    "tests/network"
  ];
  preCheck = ''
    export HOME=$TMPDIR
  '';

  # For the dev shell: the same libraries in a python3.withPackages environment.
  passthru = { inherit pythonDependencies; };

  pythonImportsCheck = [
    "musicfs"
    "musicfs.cli"
  ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "musicfs";
    platforms = lib.platforms.linux;
  };
}
