# netboot-init (the static /init of the netboot initrd) and initrd-layout (which assembles
# that initrd), built from this Cargo workspace and its Cargo.lock.
#
#   pkgs.callPackage ./nix/package.nix { }             # static with glibc (crt-static)
#   pkgs.pkgsStatic.callPackage ./nix/package.nix { }  # static with musl
{ lib, stdenv, rustPlatform, glibc }:

let
  root = ../.;
  manifest = builtins.fromTOML (builtins.readFile ../Cargo.toml);

  # The workspace's sources: every member's manifest and code, without build outputs, the
  # fuzzing crate (outside the workspace), the developer cargo aliases, CI and VCS data, and
  # this directory (so editing the Nix files does not rebuild the binaries).
  src = lib.cleanSourceWith {
    name = "netboot-init-source";
    src = root;
    filter = path: type:
      let
        rel = lib.removePrefix (toString root + "/") (toString path);
      in
      !(builtins.elem rel [ "fuzz" "nix" ".cargo" ".ci" ".git" ])
      && !(type == "directory" && baseNameOf path == "target");
  };

  # A static PID 1 with glibc needs its static archives; with musl (pkgsStatic) the toolchain
  # links statically already.
  glibcStatic = !stdenv.hostPlatform.isStatic && stdenv.hostPlatform.isGnu;
in
rustPlatform.buildRustPackage {
  pname = "netboot-init";
  inherit (manifest.package) version;
  inherit src;

  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [ "--package" "netboot-init" "--package" "initrd-layout" ];

  # The project's static build flag. buildRustPackage always passes --target, which keeps
  # RUSTFLAGS away from build scripts and proc macros, as the explicit --target of the
  # project's own build does.
  RUSTFLAGS = lib.optionalString glibcStatic "-C target-feature=+crt-static";
  buildInputs = lib.optionals glibcStatic [ glibc.static ];

  # The tests need root, real kernels and QEMU (`cargo xtask test`); the sandbox has none.
  doCheck = false;

  meta = {
    description = manifest.package.description;
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    mainProgram = "initrd-layout";
  };
}
