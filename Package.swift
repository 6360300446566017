// swift-tools-version:6.2
import PackageDescription

// The CLI and berth-spawn start once per command, per exec and per VPS start (and berth-spawn
// again at each in-VPS reboot and final stop). Linked as static, non-PIE executables they skip the dynamic loader
// and the relocation of every pointer in their data: measured here, a CLI command starts 1.9 ms
// sooner, berth-spawn starts in 1.1 ms instead of 1.7 ms, and a monitor keeps 164 kB of private
// memory instead of 496 kB. The daemons keep glibc's dynamic NSS (host names, users) and stay PIE.
// Release builds only: a debug build links the Swift libraries dynamically, and its link would
// miss the static libraries that Foundation's own libraries pull in (they are named below).
let staticExecutable: [LinkerSetting] =
    [.unsafeFlags(["-static-executable"], .when(configuration: .release))]
    // Without --static-swift-stdlib the driver names no static library that Foundation's own pull in.
    + ["_FoundationCollections", "_FoundationCShims", "swiftSynchronization"].map { .linkedLibrary($0, .when(configuration: .release)) }

// Dependencies are pinned exactly: the local mirror carries specific versions and CI builds from a
// clean clone, so "from:" could drift to a different mirrored patch release between machines.
/// `make build`, `make test` and `make check` build Berth's own targets with warnings as errors
/// (BERTH_STRICT=1); a plain `swift build` does not, so a newer toolchain's new warnings do not
/// stop a user's build.
let ownSwiftSettings: [SwiftSetting] = Context.environment["BERTH_STRICT"] == "1" ? [.unsafeFlags(["-warnings-as-errors"])] : []

let package = Package(
    name: "Berth",
    products: [
        .executable(name: "berth", targets: ["berth"]),
        .executable(name: "berth-agent", targets: ["berth-agent"]),
        .executable(name: "berth-spawn", targets: ["berth-spawn"]),
        .executable(name: "berth-controller", targets: ["berth-controller"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.2"),
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", exact: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", exact: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", exact: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", exact: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", exact: "4.5.2"),
        .package(url: "https://github.com/apple/swift-asn1.git", exact: "1.7.4"),
        .package(url: "https://github.com/groue/GRDB.swift.git", exact: "7.10.0"),
    ],
    targets: [
        // Everything Swift cannot (or must not) do itself: fork+exec with a clean child, raw clone,
        // pivot_root, pidfd_*, ioctls (variadic in C, so unreachable from Swift).
        .target(name: "CIsolation", cSettings: [.define("_GNU_SOURCE")]),
        .systemLibrary(name: "CLibcap", providers: [.apt(["libcap-dev"])]),
        // The rules every layer shares (names, addresses, host:port, sizes, limits and what a VPS
        // commits, error codes): no dependencies, no Foundation, so each layer may import it.
        .target(name: "BerthCore"),
        // Kernel mechanism only. Deliberately Foundation-free: berth-spawn links it and runs for
        // every start, exec and reboot, so what it maps is paid on each.
        .target(name: "Isolation", dependencies: ["BerthCore", "CIsolation", "CLibcap"]),
        // The protocol: frames, messages, the Unix-socket transport, identities and the small
        // text formats (roles, join tokens). No TLS, so the fuzzers stay cheap to build.
        .target(
            name: "Wire",
            dependencies: [
                "BerthCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Protos"]
        ),
        // mTLS transport and the cluster CA (certificates, bundles, revocation).
        .target(
            name: "WireTLS",
            dependencies: [
                "BerthCore", "Wire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // Pure placement policy: the scheduler, IP pool arithmetic, the controller's settings.
        .target(name: "Placement", dependencies: ["BerthCore", "Wire"]),
        .target(
            name: "NodeAgent",
            dependencies: [
                "BerthCore", "Isolation", "Wire", "WireTLS",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The cluster control plane; today its pure scheduler (no I/O, unit-tested in memory).
        .target(
            name: "Controller",
            dependencies: [
                "BerthCore", "Wire", "WireTLS", "Placement",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "berth",
            dependencies: [
                "BerthCore", "Wire", "WireTLS",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            linkerSettings: staticExecutable
        ),
        .executableTarget(
            name: "berth-agent",
            dependencies: [
                "BerthCore", "NodeAgent", "Isolation", "Wire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(name: "berth-spawn", dependencies: ["Isolation", "CIsolation"], linkerSettings: staticExecutable),
        .executableTarget(
            name: "berth-controller",
            dependencies: [
                "BerthCore", "Controller", "Wire", "WireTLS", "Placement",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // libFuzzer driver: Tests/fuzz/run.sh builds it with -sanitize=fuzzer.
        .target(name: "CFuzzDriver", path: "Tests/fuzz/CFuzzDriver"),
        .executableTarget(
            name: "fuzz-decoders",
            dependencies: ["CFuzzDriver", "BerthCore", "Wire", "Isolation", "Placement", .product(name: "NIOCore", package: "swift-nio")],
            path: "Tests/fuzz/FuzzDecoders"),
        // Cluster benchmarks (Benchmarks/cluster.sh): RPC, scheduler, store, heartbeats.
        .executableTarget(
            name: "cluster-bench",
            dependencies: [
                "BerthCore", "Controller", "Placement", "Wire", "WireTLS", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Benchmarks/ClusterBench"),
        .testTarget(
            name: "WireTests",
            dependencies: [
                "BerthCore", "Wire", "WireTLS", .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]),
        .testTarget(name: "IsolationTests", dependencies: ["BerthCore", "Isolation"]),
        .testTarget(name: "BerthCoreTests", dependencies: ["BerthCore"]),
        .testTarget(name: "PlacementTests", dependencies: ["Placement", "BerthCore", "Wire"]),
        .testTarget(
            name: "ControllerTests",
            dependencies: [
                "BerthCore", "Controller", "Placement", "Wire",
                .product(name: "GRDB", package: "GRDB.swift"),
            ]),
        .testTarget(
            name: "NodeAgentTests",
            dependencies: [
                "BerthCore", "NodeAgent", "Isolation", "Wire",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(name: "CLITests", dependencies: ["berth", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
    ],
    // Swift 5 language mode: NIO channel handlers and the syscall layer share mutable state
    // across the event loop by design; full Swift 6 isolation checking comes in a later pass.
    swiftLanguageModes: [.v5]
)

for target in package.targets where target.type != .system && !["CIsolation", "CFuzzDriver"].contains(target.name) {
    target.swiftSettings = (target.swiftSettings ?? []) + ownSwiftSettings
}
