// The berth-spawn <-> berth-monitor contract as the C monitor needs it. The Swift side is
// Sources/Isolation/HelperProtocol.swift; HelperProtocolTests (Tests/IsolationTests) reads this
// file and fails when the two differ. Docs/architecture.md §4 draws the sequence.
#ifndef BERTH_HELPER_PROTOCOL_H
#define BERTH_HELPER_PROTOCOL_H

// Hand-off options, berth-spawn -> berth-monitor and back (HelperProtocol.HandOff.Option).
#define BERTH_OPTION_RUN_DIR "--run-dir"
#define BERTH_OPTION_SELF "--self"
#define BERTH_OPTION_MONITOR "--monitor"
#define BERTH_OPTION_INIT "--init"
#define BERTH_OPTION_MASTER "--master"
#define BERTH_OPTION_SLAVE "--slave"
#define BERTH_OPTION_LISTENER "--listener"
#define BERTH_OPTION_SIGNALS "--signals"
#define BERTH_OPTION_CLIENT "--client"
#define BERTH_OPTION_SPEC "--spec"
#define BERTH_OPTION_HISTORY "--history"
#define BERTH_OPTION_CAPACITY "--capacity"
#define BERTH_OPTION_STATUS "--status"

// `berth-spawn resume`, the least console ring, the history memfd's name (HelperProtocol.HandOff).
#define BERTH_RESUME_COMMAND "resume"
#define BERTH_MINIMUM_CAPACITY 4096
#define BERTH_HISTORY_MEMFD_NAME "berth-console-history"

// The exit record in RUN/NAME/exit (HelperProtocol.ExitRecord, RunState.exitFile).
#define BERTH_EXIT_FILE "exit"
#define BERTH_EXIT_REASON_KEY "reason="
#define BERTH_EXIT_TIME_KEY "time="
#define BERTH_EXIT_MONITOR_FAILED "monitor failed: "

// The node's lease and a VPS's fence (HelperProtocol.LeaseRecord, Docs/ha.md).
#define BERTH_LEASE_FILE "lease"
#define BERTH_LEASE_ARMED_FILE "fence"
#define BERTH_LEASE_FENCED_FILE "fenced"
#define BERTH_LEASE_CAPABLE_FILE "fence-capable"
#define BERTH_LEASE_EPOCH_KEY "epoch="
#define BERTH_LEASE_EXPIRES_KEY "expires="
#define BERTH_LEASE_CHECK_MILLISECONDS 200
#define BERTH_STOP_REQUEST_FILE "stop-requested"

#endif
