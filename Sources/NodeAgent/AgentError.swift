import BerthCore
import Isolation
import Wire

/// The node agent's error: a stable code shared with the wire, a message naming what was
/// wrong, the input field at fault, and for kernel failures the stage and errno.
public struct AgentError: Error, CustomStringConvertible, WireErrorConvertible {
    public var wireError: WireError

    public init(_ code: WireError.Code, _ message: String, field: String = "", stage: String = "", errno: Int32 = 0) {
        wireError = WireError(code, message, field: field, stage: stage, errno: errno)
    }

    public var description: String { wireError.message }

    public static func invalid(_ field: String, _ message: String) -> AgentError {
        AgentError(.invalidArgument, "\(field): \(message)", field: field)
    }

    public static func notFound(_ name: String) -> AgentError {
        AgentError(.notFound, "VPS \(name) does not exist", field: "name")
    }

    public static func unsupported(_ field: String, _ why: String) -> AgentError {
        AgentError(.invalidArgument, "\(field): \(why)", field: field)
    }

    /// A kernel-layer failure, with the context of the operation it broke.
    public static func kernel(_ context: String, _ error: IsolationError) -> AgentError {
        // A limit this host cannot enforce is the operator's input meeting the node's limits.
        let code: WireError.Code = error.code == .unsupported ? .invalidArgument : .kernel
        return AgentError(code, "\(context): \(error.message)", stage: error.stage, errno: error.errno)
    }
}

/// An Isolation failure that no caller put in context (a pipe, a descriptor) still reaches the
/// client with its code, stage and errno rather than as `internal`.
extension IsolationError: WireErrorConvertible {
    public var wireError: WireError { AgentError.kernel("node agent", self).wireError }
}
