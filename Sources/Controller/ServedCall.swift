import Wire

/// One call being served: the service, the request, its authorised caller and its stream. The
/// call table's handlers are its methods (ServedCall+Handlers.swift): they turn the request's
/// wire types into the arguments of the controller's parts and their results into a response.
struct ServedCall: Sendable {
    let service: ControllerService
    let request: Berth_V1_Request
    let caller: Caller
    let stream: ServerStream

    /// The caller's certificate, for calls the table gives `.node` access (which requires one).
    var certificate: CertificateIdentity {
        get throws {
            guard let identity = caller.identity else {
                throw WireError(.unauthenticated, "a client certificate from the cluster CA is required (only enrolment works without one)")
            }
            return identity
        }
    }
}
