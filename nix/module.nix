# netboot-init as /init of a NixOS netboot image.
#
# Use together with nixpkgs' netboot module:
#
#   imports = [
#     (modulesPath + "/installer/netboot/netboot-minimal.nix")   # or netboot.nix / netboot-base.nix
#     /path/to/netboot-init/nix/module.nix
#   ];
#   boot.initrd.netbootInit.enable = true;
#
# It replaces system.build.netbootRamdisk (and with it the initrd of system.build.kexecTree)
# by an initrd built with `initrd-layout build`: netboot-init as /init, its JSON config
# (system.build.netbootInitConfig, made from the NixOS fileSystems by ./config.nix), the kernel
# modules the boot needs and the squashfs store image (system.build.squashfsStore).
# system.build.initialRamdisk, the NixOS stage 1 of toplevel, is left as it is.
{ config, lib, pkgs, options, ... }:

let
  cfg = config.boot.initrd.netbootInit;
  inherit (lib) mkOption types;

  toplevel = config.system.build.toplevel;
  kernel = config.boot.kernelPackages.kernel;
  nixStore = "${lib.getBin config.nix.package}/bin/nix-store";

  initConfig = import ./config.nix {
    inherit (config) fileSystems;
    settings = {
      # Used when the kernel command line has no init= (the iPXE script and the kexec script
      # both pass one).
      init = "${toplevel}/init";
      kernelModules = cfg.extraModules;
      moduleParams = cfg.moduleParams;
      registration = {
        mode = cfg.registration;
        nixStore = if cfg.registration == "load-db" then nixStore else null;
      };
      failure = {
        emergencyAccess = cfg.emergencyAccess;
        rebootTimeoutSecs = cfg.rebootTimeout;
      };
    };
  };

  configFile = pkgs.writeText "netboot-init.json" (builtins.toJSON initConfig);

  # The database `nix-store --load-db` would make at boot, made now from the same registration
  # the squashfs image carries (make-squashfs.nix: closureInfo of netboot.storeContents).
  prebuiltDb = pkgs.runCommand "netboot-init-nix-db"
    {
      nativeBuildInputs = [ config.nix.package ];
      registration = "${pkgs.closureInfo { rootPaths = config.netboot.storeContents; }}/registration";
    }
    ''
      export HOME=$TMPDIR
      root=$TMPDIR/root
      mkdir -p $root
      nix-store --store "local?root=$root" --option build-users-group "" --load-db < $registration
      mkdir $out
      # `reserved` is disk space Nix keeps for the garbage collector; it is recreated on use.
      for f in db.sqlite schema big-lock; do
        if [ -e $root/nix/var/nix/db/$f ]; then cp $root/nix/var/nix/db/$f $out/; fi
      done
      for j in $root/nix/var/nix/db/*-wal $root/nix/var/nix/db/*-journal; do
        if [ -s "$j" ]; then echo "nix-store left an SQLite journal $j behind" >&2; exit 1; fi
      done
    '';

  layoutArgs =
    [
      "--init" "${cfg.package}/bin/netboot-init"
      "--config" "${configFile}"
      "--modules" "${config.system.modulesTree}/lib/modules/${kernel.modDirVersion}"
      "--store-image" "${config.system.build.squashfsStore}"
      "--compress" cfg.compression
    ]
    ++ lib.optionals (cfg.registration == "prebuilt") [ "--nix-db" "${prebuiltDb}" ]
    ++ lib.optionals cfg.emergencyAccess [ "--shell" "${cfg.shellPackage}/bin/busybox" ];

  # Stage-1 settings only the scripted (or systemd) stage 1 acts on: set, they would be
  # silently lost.
  initrd = config.boot.initrd;
  ignored =
    lib.optional (initrd.systemd.enable or false) "boot.initrd.systemd.enable"
    ++ lib.optional (initrd.network.enable or false) "boot.initrd.network.enable"
    ++ lib.optional ((initrd.secrets or { }) != { }) "boot.initrd.secrets"
    ++ lib.optional ((initrd.luks.devices or { }) != { }) "boot.initrd.luks.devices"
    ++ map (name: "boot.initrd.${name}") (builtins.filter (name: (initrd.${name} or "") != "") [
      "preDeviceCommands"
      "preLVMCommands"
      "postDeviceCommands"
      "postResumeCommands"
      "postMountCommands"
      "preFailCommands"
    ]);

  needsNetboot = ''
    boot.initrd.netbootInit needs nixpkgs' netboot module
    (nixos/modules/installer/netboot/netboot.nix, or netboot-minimal.nix) imported.
  '';

  # Building the ramdisk does not check the assertions: say here what is missing.
  ramdisk = if !(options ? netboot) then throw needsNetboot else pkgs.runCommand "netboot-init-ramdisk"
    {
      nativeBuildInputs = [ cfg.package ];
      passthru = {
        config = configFile;
        inherit layoutArgs prebuiltDb;
      };
    }
    ''
      mkdir $out
      initrd-layout build ${lib.escapeShellArgs layoutArgs} -o $out/initrd
    '';
in
{
  options.boot.initrd.netbootInit = {
    enable = lib.mkEnableOption ''
      netboot-init as /init of the netboot ramdisk (system.build.netbootRamdisk): one static
      program instead of the scripted stage 1, which loads the modules, mounts the store and
      registers it with Nix'';

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = ''
        The package providing bin/netboot-init (a static binary, copied into the initrd) and
        bin/initrd-layout (run at build time to assemble the initrd).
      '';
    };

    registration = mkOption {
      type = types.enum [ "load-db" "prebuilt" "none" ];
      default = "load-db";
      description = ''
        How the Nix store in the image is registered, before stage 2 starts.
        `load-db`: the image's own `nix-store --load-db < /nix/store/nix-path-registration`
        (as netboot.nix's boot.postBootCommands does); `prebuilt`: a database built with the
        image is copied in place, nothing is run at boot (the initrd grows by the database's
        size); `none`: nothing, for images that do not need a Nix database or register it
        themselves. All but `none` also create /etc/NIXOS and the system profile.
      '';
    };

    emergencyAccess = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Allow an emergency shell in stage 1 when the kernel command line asks for one
        (`boot.shell_on_fail`, `boot.debug1*`). Like systemd-initrd's emergencyAccess, a
        kernel parameter alone never opens a root shell. Adds a static busybox to the initrd.
      '';
    };

    shellPackage = mkOption {
      type = types.package;
      default = pkgs.pkgsStatic.busybox;
      defaultText = lib.literalExpression "pkgs.pkgsStatic.busybox";
      description = "A static busybox, the emergency shell when emergencyAccess is set.";
    };

    rebootTimeout = mkOption {
      type = types.ints.unsigned;
      default = 10;
      description = ''
        Seconds to wait before rebooting after a stage-1 failure, when neither a panic
        (`boot.panic_on_fail`) nor a shell was asked for.
      '';
    };

    extraModules = mkOption {
      type = types.listOf types.str;
      default = config.boot.initrd.kernelModules;
      defaultText = lib.literalExpression "config.boot.initrd.kernelModules";
      example = [ "virtio_net" "e1000e" ];
      description = ''
        Kernel modules to load in stage 1 besides those the file systems need (squashfs,
        loop, overlay, which are always loaded). Names or aliases, with their dependencies.
        There is no udev in stage 1: boot.initrd.availableKernelModules are not loaded.
      '';
    };

    moduleParams = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { loop = "max_loop=8"; };
      description = ''
        Parameters per kernel module, passed when the module is loaded in stage 1. A
        `module.param=value` on the kernel command line is added to them.
      '';
    };

    compression = mkOption {
      type = types.str;
      default = "zstd:19";
      example = "xz:9";
      description = ''
        Compression of the initrd's first archive (`initrd-layout build --compress`):
        zstd[:1-19], xz[:0-9], gzip[:1-9] or none. The squashfs store image is stored
        uncompressed after it, being compressed already.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = options ? netboot;
        message = needsNetboot;
      }
      {
        assertion = cfg.registration != "load-db" || (config.nix.enable or true);
        message = ''
          boot.initrd.netbootInit.registration = "load-db" runs the image's nix-store, but
          nix.enable is false: choose "prebuilt" or "none".
        '';
      }
    ];

    warnings = map (name: ''
      boot.initrd.netbootInit: ${name} is set, but the netboot ramdisk's /init is
      netboot-init, which does not run it (system.build.initialRamdisk still does).
    '') ignored;

    # netboot.nix defines the ramdisk too; this one replaces it.
    system.build.netbootRamdisk = lib.mkForce ramdisk;
    system.build.netbootInitConfig = configFile;
  };
}
