!> simvue_hpc: the Fortran interface of the simvue_hpc C client (libsimvue_hpc), through iso_c_binding.
!>
!>     use simvue_hpc
!>     type(svh_handle) :: run
!>     integer :: ierr, step
!>     ierr = svh_connect_env(run)                  ! endpoint, secret, rank from the environment
!>     if (ierr /= SVH_OK) error stop svh_last_error()
!>     do step = 0, 99
!>        ierr = svh_log(run, "energy", e(step), step)
!>     end do
!>     ierr = svh_event(run, "done")
!>     ierr = svh_save(run, "result.dat", "output")
!>     ierr = svh_close(run)                        ! flush, goodbye, wait for the acknowledgement
!>
!> Every function returns an integer code: SVH_OK (0), SVH_DROPPED (1: the points were dropped by
!> the overflow policy) or a negative SVH_E* code; svh_last_error() then says why. See
!> c/include/simvue_hpc.h for the behaviour (threads, batching, overflow, abort). Character
!> arguments are passed without their trailing blanks. Steps may be default or 64-bit integers;
!> omitted, the step is one more than the last call's.
module simvue_hpc
   use, intrinsic :: iso_c_binding, only: c_ptr, c_null_ptr, c_int, c_int64_t, c_double, c_size_t, &
                                           c_char, c_null_char, c_loc, c_associated, c_f_pointer
   implicit none
   private

   integer, parameter, public :: SVH_OK = 0, SVH_DROPPED = 1, SVH_EINVAL = -1, SVH_ECLOSED = -2, &
                                 SVH_ETIMEOUT = -3, SVH_EREJECTED = -4, SVH_EIO = -5, SVH_ENOMEM = -6, &
                                 SVH_EABORTED = -7

   !> One connection to the run's aggregator (one rank).
   type, public :: svh_handle
      type(c_ptr) :: ptr = c_null_ptr
   end type svh_handle

   public :: svh_connect_env, svh_connect, svh_log, svh_log_many, svh_event, svh_status, svh_save, &
             svh_close, svh_rank, svh_connected, svh_last_error

   !> svh_log(run, name, value [, step]): one point.
   interface svh_log
      module procedure log_auto, log_step32, log_step64
   end interface svh_log

   !> svh_log_many(run, names, values [, step]): several points at one step.
   interface svh_log_many
      module procedure log_many_auto, log_many_step32, log_many_step64
   end interface svh_log_many

   interface
      function c_connect_env_ex(timeout_ms, reductions, client) bind(C, name="svh_connect_env_ex") result(h)
         import :: c_int, c_ptr
         integer(c_int), value :: timeout_ms
         type(c_ptr), value :: reductions, client
         type(c_ptr) :: h
      end function c_connect_env_ex

      function c_connect(endpoint, secret, rank, timeout_ms) bind(C, name="svh_connect") result(h)
         import :: c_int, c_ptr, c_char
         character(kind=c_char), dimension(*), intent(in) :: endpoint, secret
         integer(c_int), value :: rank, timeout_ms
         type(c_ptr) :: h
      end function c_connect

      function c_log_many(h, n, names, values, step) bind(C, name="svh_log_many") result(rc)
         import :: c_int, c_ptr, c_size_t, c_double, c_int64_t
         type(c_ptr), value :: h
         integer(c_size_t), value :: n
         type(c_ptr), dimension(*), intent(in) :: names
         real(c_double), dimension(*), intent(in) :: values
         integer(c_int64_t), value :: step
         integer(c_int) :: rc
      end function c_log_many

      function c_event(h, message) bind(C, name="svh_event") result(rc)
         import :: c_int, c_ptr, c_char
         type(c_ptr), value :: h
         character(kind=c_char), dimension(*), intent(in) :: message
         integer(c_int) :: rc
      end function c_event

      function c_status(h, status, reason) bind(C, name="svh_status") result(rc)
         import :: c_int, c_ptr, c_char
         type(c_ptr), value :: h
         character(kind=c_char), dimension(*), intent(in) :: status, reason
         integer(c_int) :: rc
      end function c_status

      function c_save(h, path, category) bind(C, name="svh_save") result(rc)
         import :: c_int, c_ptr, c_char
         type(c_ptr), value :: h
         character(kind=c_char), dimension(*), intent(in) :: path, category
         integer(c_int) :: rc
      end function c_save

      function c_close(h, timeout_ms) bind(C, name="svh_close") result(rc)
         import :: c_int, c_ptr
         type(c_ptr), value :: h
         integer(c_int), value :: timeout_ms
         integer(c_int) :: rc
      end function c_close

      function c_rank(h) bind(C, name="svh_rank") result(rank)
         import :: c_int, c_ptr
         type(c_ptr), value :: h
         integer(c_int) :: rank
      end function c_rank

      function c_last_error() bind(C, name="svh_last_error") result(p)
         import :: c_ptr
         type(c_ptr) :: p
      end function c_last_error

      function c_last_error_code() bind(C, name="svh_last_error_code") result(code)
         import :: c_int
         integer(c_int) :: code
      end function c_last_error_code

      function c_strlen(s) bind(C, name="strlen") result(n)
         import :: c_ptr, c_size_t
         type(c_ptr), value :: s
         integer(c_size_t) :: n
      end function c_strlen
   end interface

   character(len=*), parameter :: CLIENT = "simvue_hpc-fortran 0.1.0"

contains

   !> A NUL-terminated copy of s without its trailing blanks.
   pure function cstr(s) result(out)
      character(len=*), intent(in) :: s
      character(kind=c_char, len=:), allocatable :: out
      out = trim(s)//c_null_char
   end function cstr

   !> The failure code of a connect that returned NULL (never SVH_OK).
   integer function connect_failure()
      connect_failure = int(c_last_error_code())
      if (connect_failure == SVH_OK) connect_failure = SVH_EIO
   end function connect_failure

   !> Attach to the run given by the environment (SIMVUE_HPC_ENDPOINT, SIMVUE_HPC_SECRET; see
   !> svh_connect_env in simvue_hpc.h). timeout_ms: the handshake's bound (default: 30 s or
   !> SIMVUE_HPC_CONNECT_TIMEOUT); reductions: "name=op,op;name2=op" (see svh_options.reductions).
   integer function svh_connect_env(run, timeout_ms, reductions) result(ierr)
      type(svh_handle), intent(out) :: run
      integer, intent(in), optional :: timeout_ms
      character(len=*), intent(in), optional :: reductions
      character(kind=c_char, len=:), allocatable, target :: red_c, client_c
      type(c_ptr) :: red_p
      integer(c_int) :: t
      t = -1
      if (present(timeout_ms)) t = int(timeout_ms, c_int)
      red_p = c_null_ptr
      if (present(reductions)) then
         red_c = cstr(reductions)
         red_p = c_loc(red_c)
      end if
      client_c = cstr(CLIENT)
      run%ptr = c_connect_env_ex(t, red_p, c_loc(client_c))
      ierr = SVH_OK
      if (.not. c_associated(run%ptr)) ierr = connect_failure()
   end function svh_connect_env

   !> Attach to an explicit endpoint with the run's secret, as rank (-1: the aggregator assigns one).
   integer function svh_connect(run, endpoint, secret, rank, timeout_ms) result(ierr)
      type(svh_handle), intent(out) :: run
      character(len=*), intent(in) :: endpoint, secret
      integer, intent(in) :: rank
      integer, intent(in), optional :: timeout_ms
      integer(c_int) :: t
      t = -1
      if (present(timeout_ms)) t = int(timeout_ms, c_int)
      run%ptr = c_connect(cstr(endpoint), cstr(secret), int(rank, c_int), t)
      ierr = SVH_OK
      if (.not. c_associated(run%ptr)) ierr = connect_failure()
   end function svh_connect

   !> True while the handle is connected (between a successful connect and svh_close).
   logical function svh_connected(run)
      type(svh_handle), intent(in) :: run
      svh_connected = c_associated(run%ptr)
   end function svh_connected

   integer function log_n(run, names, values, step) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: names(:)
      real(c_double), intent(in) :: values(:)
      integer(c_int64_t), intent(in) :: step
      character(kind=c_char, len=len(names) + 1), allocatable, target :: buf(:)
      type(c_ptr), allocatable :: ptrs(:)
      integer :: k
      if (size(names) /= size(values)) then
         ierr = SVH_EINVAL
         return
      end if
      allocate (buf(size(names)), ptrs(size(names)))
      do k = 1, size(names)
         buf(k) = trim(names(k))//c_null_char
         ptrs(k) = c_loc(buf(k))
      end do
      ierr = int(c_log_many(run%ptr, int(size(names), c_size_t), ptrs, values, step))
   end function log_n

   integer function log_auto(run, name, value) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: name
      real(c_double), intent(in) :: value
      ierr = log_n(run, [name], [value], -1_c_int64_t)
   end function log_auto

   integer function log_step32(run, name, value, step) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: name
      real(c_double), intent(in) :: value
      integer, intent(in) :: step
      ierr = log_n(run, [name], [value], int(step, c_int64_t))
   end function log_step32

   integer function log_step64(run, name, value, step) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: name
      real(c_double), intent(in) :: value
      integer(c_int64_t), intent(in) :: step
      ierr = log_n(run, [name], [value], step)
   end function log_step64

   integer function log_many_auto(run, names, values) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: names(:)
      real(c_double), intent(in) :: values(:)
      ierr = log_n(run, names, values, -1_c_int64_t)
   end function log_many_auto

   integer function log_many_step32(run, names, values, step) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: names(:)
      real(c_double), intent(in) :: values(:)
      integer, intent(in) :: step
      ierr = log_n(run, names, values, int(step, c_int64_t))
   end function log_many_step32

   integer function log_many_step64(run, names, values, step) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: names(:)
      real(c_double), intent(in) :: values(:)
      integer(c_int64_t), intent(in) :: step
      ierr = log_n(run, names, values, step)
   end function log_many_step64

   !> Records an event (level info), after the points logged before it.
   integer function svh_event(run, message) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: message
      ierr = int(c_event(run%ptr, cstr(message)))
   end function svh_event

   !> Sets the run's status as this rank sees it ("failed" ends the run as failed).
   integer function svh_status(run, status, reason) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: status
      character(len=*), intent(in), optional :: reason
      if (present(reason)) then
         ierr = int(c_status(run%ptr, cstr(status), cstr(reason)))
      else
         ierr = int(c_status(run%ptr, cstr(status), c_null_char))
      end if
   end function svh_status

   !> Stores a copy of a file with the run (category "input", "output" or "code"), once per content.
   integer function svh_save(run, path, category) result(ierr)
      type(svh_handle), intent(in) :: run
      character(len=*), intent(in) :: path, category
      ierr = int(c_save(run%ptr, cstr(path), cstr(category)))
   end function svh_save

   !> Flushes, says goodbye and waits for the acknowledgement (at most timeout_ms; default the close
   !> timeout); the handle is released whatever the outcome. SVH_OK: every point sent is stored.
   integer function svh_close(run, timeout_ms) result(ierr)
      type(svh_handle), intent(inout) :: run
      integer, intent(in), optional :: timeout_ms
      integer(c_int) :: t
      t = -1
      if (present(timeout_ms)) t = int(timeout_ms, c_int)
      ierr = int(c_close(run%ptr, t))
      run%ptr = c_null_ptr
   end function svh_close

   !> The rank this handle is known by in the run; -1 if not connected.
   integer function svh_rank(run)
      type(svh_handle), intent(in) :: run
      svh_rank = int(c_rank(run%ptr))
   end function svh_rank

   !> This thread's last error message ("" if none).
   function svh_last_error() result(message)
      character(len=:), allocatable :: message
      character(kind=c_char), pointer :: chars(:)
      type(c_ptr) :: p
      integer :: n, k
      p = c_last_error()
      n = int(c_strlen(p))
      call c_f_pointer(p, chars, [n])
      allocate (character(len=n) :: message)
      do k = 1, n
         message(k:k) = chars(k)
      end do
   end function svh_last_error

end module simvue_hpc
