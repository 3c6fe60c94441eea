# The NixOS VM tests, by check name (flake.nix turns each into checks.<system>.<name>).
{
  vm-basic = ./basic.nix;
  vm-crash-recovery = ./crash-recovery.nix;
  vm-tiny-disk = ./tiny-disk.nix;
  vm-sftp-outage = ./sftp-outage.nix;
  vm-minio = ./minio.nix;
}
